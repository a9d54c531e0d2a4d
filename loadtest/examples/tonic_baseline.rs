//! What a tonic client costs per simulated proxy, to compare with loadtest's
//! own HTTP/2 client: N tonic `Channel`s (one connection each), each with a
//! Delta ADS stream subscribed to CDS and ACKing every response. Prints the
//! process RSS before and after, and the difference per client.
//!
//! ```text
//! cargo run --release -p meshplane-loadtest --example tonic_baseline -- 127.0.0.1:15010 5000 MESH/proxies.jsonl
//! ```

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshplane_loadtest::facts::XdsType;
use meshplane_loadtest::mesh::{ProxySpec, expand_proxies, read_proxies};
use meshplane_loadtest::procstat;
use tokio::sync::{mpsc, watch};

async fn client(addr: &str, spec: &ProxySpec, acked: &watch::Sender<usize>) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(spec.node()),
        type_url: XdsType::Cds.type_url().into(),
        ..Default::default()
    })
    .await?;
    let mut responses =
        client.delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let mut first = true;
    while let Some(resp) = responses.message().await? {
        tx.send(DeltaDiscoveryRequest { type_url: resp.type_url, response_nonce: resp.nonce, ..Default::default() })
            .await?;
        if std::mem::take(&mut first) {
            acked.send_modify(|a| *a += 1);
        }
    }
    anyhow::bail!("stream ended")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(n), Some(proxies)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: tonic_baseline ADDR N PROXIES_JSONL");
    };
    let n: usize = n.parse()?;
    let specs = expand_proxies(&read_proxies(std::path::Path::new(&proxies))?, n);
    let before = procstat::sample_self().unwrap_or_default();
    let (acked_tx, mut acked_rx) = watch::channel(0usize);
    for spec in specs {
        let addr = addr.clone();
        let acked = acked_tx.clone();
        tokio::spawn(async move {
            // Retry like a proxy would (a burst of connects can overflow the accept queue).
            loop {
                if let Err(e) = client(&addr, &spec, &acked).await {
                    eprintln!("tonic client {}: {e}; retrying", spec.id);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    tokio::time::timeout_at(deadline, acked_rx.wait_for(|a| *a >= n)).await??;
    // Let the last ACKs go out before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procstat::sample_self().unwrap_or_default();
    println!(
        "tonic: {n} clients, RSS {} KB -> {} KB: {:.1} KB per client (connection + Delta stream, CDS only)",
        before.rss_kb,
        after.rss_kb,
        (after.rss_kb - before.rss_kb) as f64 / n as f64
    );
    Ok(())
}
