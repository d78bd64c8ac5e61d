//! `fairway.v1.JobService`: producers.

use super::convert;
use crate::broker::Broker;
use crate::model::MAX_BATCH;
use crate::pb;
use crate::pb::job_service_server::JobService;
use tonic::{Request, Response, Status};

pub struct JobsApi {
    pub broker: Broker,
}

fn response(o: crate::broker::EnqueueOutcome) -> pb::EnqueueResponse {
    pb::EnqueueResponse { job_id: o.id.to_string(), deduplicated: o.deduplicated }
}

#[tonic::async_trait]
impl JobService for JobsApi {
    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, Status> {
        let job = convert::new_job(req.into_inner())?;
        let mut out = self.broker.enqueue(vec![job], false).await?;
        let o = out.pop().ok_or_else(|| Status::internal("enqueue returned no result"))?;
        Ok(Response::new(response(o)))
    }

    async fn enqueue_batch(
        &self,
        req: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
        let jobs = req.into_inner().jobs;
        if jobs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch holds {} jobs; the limit is {MAX_BATCH}: split it",
                jobs.len()
            )));
        }
        let mut valid = Vec::with_capacity(jobs.len());
        for (i, j) in jobs.into_iter().enumerate() {
            valid.push(convert::new_job(j).map_err(|e| e.context(&format!("jobs[{i}]")))?);
        }
        let out = self.broker.enqueue(valid, true).await?;
        Ok(Response::new(pb::EnqueueBatchResponse { results: out.into_iter().map(response).collect() }))
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
