//! `fairway.v1.AdminService`: queues, stats, listings, dead letters.
//!
//! Admin tokens only (the gate sees to that); an admin token limited to some
//! queues or tenants manages only what it covers entirely (see
//! [`Access`](crate::auth::Access)).

use super::convert;
use crate::auth;
use crate::broker::{Broker, GroupScope, Redrive};
use crate::pb;
use crate::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    pub broker: Broker,
    /// In a cluster, who leads what on this node (for the cluster status);
    /// `None` on a single node.
    pub cluster: Option<crate::cluster::colocation::Leaders>,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_queue(&self, req: Request<pb::CreateQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let name = convert::queue_name(&r.name)?;
        access.admin_queue(&name)?;
        let config = convert::queue_config(r.config)?;
        Ok(Response::new(self.broker.create_queue(name, config).await?))
    }

    async fn get_queue(&self, req: Request<pb::GetQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let access = auth::access(&req)?;
        let name = convert::queue_name(&req.into_inner().queue)?;
        access.admin_queue(&name)?;
        Ok(Response::new(self.broker.get_queue(&name).await?))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let access = auth::access(&req)?;
        let mut queues = self.broker.list_queues().await?;
        queues.retain(|q| access.sees_queue(&q.name));
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn update_queue(&self, req: Request<pb::UpdateQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let name = convert::queue_name(&r.queue)?;
        access.admin_whole_queue("update", &name)?;
        let patch = convert::config_patch(r.config)?;
        Ok(Response::new(self.broker.update_queue(name, patch).await?))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let name = convert::queue_name(&r.queue)?;
        access.admin_whole_queue("delete", &name)?;
        let deleted = self.broker.delete_queue(name, r.force).await?;
        Ok(Response::new(pb::DeleteQueueResponse { deleted }))
    }

    async fn pause_queue(&self, req: Request<pb::PauseQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let access = auth::access(&req)?;
        let name = convert::queue_name(&req.into_inner().queue)?;
        access.admin_whole_queue("pause", &name)?;
        Ok(Response::new(self.broker.set_paused(name, true).await?))
    }

    async fn resume_queue(&self, req: Request<pb::ResumeQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let access = auth::access(&req)?;
        let name = convert::queue_name(&req.into_inner().queue)?;
        access.admin_whole_queue("resume", &name)?;
        Ok(Response::new(self.broker.set_paused(name, false).await?))
    }

    async fn get_queue_stats(
        &self,
        req: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::QueueStats>, Status> {
        let access = auth::access(&req)?;
        let name = convert::queue_name(&req.into_inner().queue)?;
        // The figures break down by tenant.
        access.admin_whole_queue("read the stats of", &name)?;
        Ok(Response::new(self.broker.stats(name).await?))
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let access = auth::access(&req)?;
        let r = convert::list_jobs(req.into_inner())?;
        access.admin_tenant("list jobs of", &r.queue, r.tenant.as_deref())?;
        let (jobs, next_page_token) = self.broker.list_jobs(r).await?;
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn redrive_dead_letters(
        &self,
        req: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let name = convert::queue_name(&r.queue)?;
        let (tenant, environment) = convert::scope_filter(&r.tenant, &r.environment)?;
        let which = if r.job_id.is_empty() {
            access.admin_tenant("redrive dead letters of", &name, tenant.as_deref())?;
            Redrive::Matching { scope: GroupScope { tenant, environment }, limit: r.limit }
        } else {
            if tenant.is_some() || environment.is_some() || r.limit != 0 {
                return Err(Status::invalid_argument(
                    "job_id names one dead letter: leave tenant, environment and limit empty",
                ));
            }
            let id = convert::job_id(&r.job_id)?;
            access.admin_queue(&name)?;
            // A job's tenant never changes, so reading it first is safe.
            let job = self.broker.get_job(name.clone(), id).await?;
            access.admin_tenant("redrive dead letters of", &name, Some(&job.tenant))?;
            Redrive::Job(id)
        };
        let redriven = self.broker.redrive(name, which).await?;
        Ok(Response::new(pb::RedriveDeadLettersResponse { redriven }))
    }

    async fn set_tenant_policy(
        &self,
        req: Request<pb::SetTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicy>, Status> {
        let access = auth::access(&req)?;
        let (queue, tenant, env, policy) = convert::tenant_policy(req.into_inner())?;
        access.admin_tenant("set the tenant policy of", &queue, Some(&tenant))?;
        Ok(Response::new(self.broker.set_tenant_policy(queue, tenant, env, policy).await?))
    }

    async fn lift_quarantine(
        &self,
        req: Request<pb::LiftQuarantineRequest>,
    ) -> Result<Response<pb::LiftQuarantineResponse>, Status> {
        let access = auth::access(&req)?;
        let (queue, version) = convert::lift_quarantine(req.into_inner())?;
        // It changes delivery for every tenant of the queue.
        access.admin_whole_queue("lift a quarantine in", &queue)?;
        let lifted = self.broker.lift_quarantine(queue, version).await?;
        Ok(Response::new(pb::LiftQuarantineResponse { lifted: Some(lifted) }))
    }

    async fn purge_queue(
        &self,
        req: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let name = convert::queue_name(&r.queue)?;
        let (tenant, environment) = convert::scope_filter(&r.tenant, &r.environment)?;
        match &tenant {
            Some(t) => access.admin_tenant("purge", &name, Some(t))?,
            None => access.admin_whole_queue("purge", &name)?,
        }
        let state = convert::job_state(r.state)?;
        let purged = self.broker.purge(name, state, GroupScope { tenant, environment }).await?;
        Ok(Response::new(pb::PurgeQueueResponse { purged }))
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let access = auth::access(&req)?;
        let r = req.into_inner();
        let queue = if r.queue.is_empty() { None } else { Some(convert::queue_name(&r.queue)?) };
        // Workers hold jobs of every tenant.
        match &queue {
            Some(q) => access.admin_whole_queue("list the workers of", q)?,
            None => access.admin_all("list the workers of")?,
        }
        let workers = self.broker.list_workers(queue).await?;
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn get_cluster_status(
        &self,
        req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        auth::access(&req)?.admin_all("read the cluster status of")?;
        Ok(Response::new(self.cluster.as_ref().map(crate::cluster::status::status).unwrap_or_default()))
    }
}
