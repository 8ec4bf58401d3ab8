//! The node side of the controller's embedded discovery (`ranger.Registry`): a
//! node registers, renews well before its registration expires, and deregisters
//! when it shuts down cleanly.

use std::time::Duration;

use ranger_proto::NodeId;
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::registry_client::RegistryClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// A running registration. Call [`Registration::deregister`] on a clean shutdown;
/// dropping it stops renewing (the controller then forgets the node when its
/// registration expires).
#[derive(Debug)]
pub struct Registration {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Why a registration could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("bad controller address {addr:?}: {source}")]
    BadAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl Registration {
    /// Starts registering `node` (serving at `node_addr`) with the controller at
    /// `controller_addr` (`host:port`). Failures are logged and retried with
    /// backoff: a node may start before its controller.
    pub fn start(
        controller_addr: &str,
        node: NodeId,
        node_addr: String,
    ) -> Result<Registration, RegistrationError> {
        let endpoint = Endpoint::from_shared(format!("http://{controller_addr}"))
            .map_err(|source| RegistrationError::BadAddress {
                addr: controller_addr.to_owned(),
                source,
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2));
        let client = RegistryClient::new(endpoint.connect_lazy());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(renew(client, node, node_addr, stopped));
        Ok(Registration {
            stop,
            task: Some(task),
        })
    }

    /// Stops renewing and deregisters (best effort, within a couple of seconds).
    pub async fn deregister(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn renew(
    mut client: RegistryClient<Channel>,
    node: NodeId,
    addr: String,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let request = pb::RegisterRequest {
            node: node.to_string(),
            address: addr.clone(),
        };
        let wait = match client.register(request).await {
            Ok(response) => {
                backoff = Duration::from_millis(100);
                // Renew three times per TTL, so one lost renewal is harmless.
                Duration::from_millis(response.into_inner().ttl_millis.max(300) / 3)
            }
            Err(status) => {
                tracing::warn!(%node, error = %status, "could not register with the controller; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(2));
                backoff
            }
        };
        let stop = async {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop => {
                let request = pb::DeregisterRequest { node: node.to_string() };
                if let Err(status) = client.deregister(request).await {
                    tracing::warn!(%node, error = %status, "could not deregister");
                }
                return;
            }
        }
    }
}
