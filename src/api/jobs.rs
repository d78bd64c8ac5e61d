//! `fairway.v1.JobService`: producers.

use super::convert;
use super::enqueue_stream::answer;
use super::trace::{self, Tracer};
use super::traceparent::TraceParent;
use crate::auth;
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
        let access = auth::access(&req)?;
        let header = trace::metadata_parent(req.metadata());
        let inbound = req.into_inner();
        let (broker, tracer) = (self.broker.clone(), self.tracer.clone());
        Ok(Response::new(super::enqueue_stream::serve(broker, tracer, access, header, inbound)))
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, Status> {
        let access = auth::access(&req)?;
        let header = trace::metadata_parent(req.metadata());
        let r = req.into_inner();
        let parent = TraceParent::from_field(&r.traceparent, || "traceparent".into())?.or(header);
        let job = convert::new_job(r)?;
        access.produce(&job.queue, &job.tenant)?;
        let mut jobs = vec![job];
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
        let access = auth::access(&req)?;
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
            let job = convert::new_job(j).map_err(|e| e.context(&format!("jobs[{i}]")))?;
            // All or nothing: one job outside the token's lists fails the batch.
            access.produce(&job.queue, &job.tenant).map_err(|e| e.context(&format!("jobs[{i}]")))?;
            valid.push(job);
        }
        let spans = self.tracer.enqueue(&mut valid, &parents);
        let result = self.broker.enqueue(valid, true).await;
        spans.finish(&result);
        Ok(Response::new(pb::EnqueueBatchResponse { results: result?.into_iter().map(|o| answer(Ok(o))).collect() }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let queue = convert::queue_name(&r.queue)?;
        let id = convert::job_id(&r.job_id)?;
        access.jobs_queue(&queue)?;
        let job = self.broker.get_job(queue.clone(), id).await?;
        access.job_tenant(&queue, &job.tenant)?;
        Ok(Response::new(job))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let queue = convert::queue_name(&r.queue)?;
        let id = convert::job_id(&r.job_id)?;
        access.jobs_queue(&queue)?;
        if access.tenant_limited() {
            // A job's tenant never changes, so reading it first is safe.
            let job = self.broker.get_job(queue.clone(), id).await?;
            access.job_tenant(&queue, &job.tenant)?;
        }
        let cancelled = self.broker.cancel(queue, id).await?;
        Ok(Response::new(pb::CancelJobResponse { cancelled }))
    }
}
