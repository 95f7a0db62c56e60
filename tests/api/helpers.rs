//! Test harness: `spawn_app()` serves the real router on a port-0 listener.

use seckill::state::AppState;
use tokio::net::TcpListener;

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState {
        request_timeout: std::time::Duration::from_secs(10),
    };
    tokio::spawn(seckill::server::run(
        listener,
        state,
        std::future::pending(),
    ));
    TestApp {
        address,
        client: reqwest::Client::new(),
    }
}
