//! A fault-injecting TCP proxy for one directed link between two nodes:
//! node A dials node B's Raft service through it, so cutting it cuts what
//! A sends to B (and the answers to it), while B's own connections to A,
//! through their own link, keep working. Included by the tests that need
//! it (`#[path = "common/proxy.rs"] mod proxy;`).
//!
//! A cut behaves like a network partition, not like a stopped process:
//! connections open at the cut are closed (what a peer would see after its
//! TCP timeouts), and connections made during the cut are accepted and then
//! left silent, so calls over them hang until their deadline. Healing
//! closes the silent ones; the next connection is forwarded again.
#![allow(dead_code)]

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Link {
    /// Where the dialling node connects.
    pub addr: SocketAddr,
    /// True while the link is cut.
    cut: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link forwarding to `target`, open.
    pub async fn start(target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                let _ = inbound.set_nodelay(true);
                tokio::spawn(carry(inbound, target, cut_rx.clone()));
            }
        });
        Link { addr, cut, accept }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One connection: held silent while the link is cut, else forwarded both
/// ways until either side closes or the link is cut.
async fn carry(mut inbound: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow() {
        // Silent: keep the socket, read nothing, until the heal closes it.
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}
