//! `fairway.v1.JobService`: producers.

use super::convert;
use super::enqueue_stream::answer;
use super::trace::{self, Tracer};
use super::traceparent::TraceParent;
use crate::broker::Broker;
use crate::model::MAX_BATCH;
use crate::pb;
use crate::pb::job_service_server::JobService;
use tonic::{Request, Response, Status};

pub struct JobsApi {
    pub broker: Broker,
    /// Makes the enqueue spans whose context is stored with each job.
    pub tracer: Tracer,
}

#[tonic::async_trait]
impl JobService for JobsApi {
    type EnqueueStreamStream = super::enqueue_stream::EnqueueStream;

    async fn enqueue_stream(
        &self,
        req: Request<tonic::Streaming<pb::EnqueueRequest>>,
    ) -> Result<Response<Self::EnqueueStreamStream>, Status> {
        let header = trace::metadata_parent(req.metadata());
        let inbound = req.into_inner();
        Ok(Response::new(super::enqueue_stream::serve(self.broker.clone(), self.tracer.clone(), header, inbound)))
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, Status> {
        let header = trace::metadata_parent(req.metadata());
        let r = req.into_inner();
        let parent = TraceParent::from_field(&r.traceparent, || "traceparent".into())?.or(header);
        let mut jobs = vec![convert::new_job(r)?];
        let spans = self.tracer.enqueue(&mut jobs, &[parent]);
        let result = self.broker.enqueue(jobs, false).await;
        spans.finish(&result);
        let o = result?.pop().ok_or_else(|| Status::internal("enqueue returned no result"))?;
        Ok(Response::new(answer(Ok(o))))
    }

    async fn enqueue_batch(
        &self,
        req: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
        // Applies to the jobs that carry no traceparent of their own.
        let header = trace::metadata_parent(req.metadata());
        let jobs = req.into_inner().jobs;
        if jobs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch holds {} jobs; the limit is {MAX_BATCH}: split it",
                jobs.len()
            )));
        }
        let mut valid = Vec::with_capacity(jobs.len());
        let mut parents = Vec::with_capacity(jobs.len());
        for (i, j) in jobs.into_iter().enumerate() {
            let parent = TraceParent::from_field(&j.traceparent, || format!("jobs[{i}].traceparent"))?;
            parents.push(parent.or(header));
            valid.push(convert::new_job(j).map_err(|e| e.context(&format!("jobs[{i}]")))?);
        }
        let spans = self.tracer.enqueue(&mut valid, &parents);
        let result = self.broker.enqueue(valid, true).await;
        spans.finish(&result);
        Ok(Response::new(pb::EnqueueBatchResponse { results: result?.into_iter().map(|o| answer(Ok(o))).collect() }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let r = req.into_inner();
        let queue = convert::queue_name(&r.queue)?;
        let id = convert::job_id(&r.job_id)?;
        Ok(Response::new(self.broker.get_job(queue, id).await?))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let r = req.into_inner();
        let queue = convert::queue_name(&r.queue)?;
        let id = convert::job_id(&r.job_id)?;
        let cancelled = self.broker.cancel(queue, id).await?;
        Ok(Response::new(pb::CancelJobResponse { cancelled }))
    }
}
