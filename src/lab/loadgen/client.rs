//! The HTTP client: one keep-alive HTTP/1.1 connection per worker, reopened
//! after a failure, reading the server's answers into the types the server
//! writes them with.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::Target;
use super::history::PayAnswer;
use crate::domain::ErrorBody;
use crate::orders::moves::OrderState;
use crate::orders::snowflake::OrderId;
use crate::sale::ItemView;
use crate::sale::purchase::Purchased;
use crate::strategy::StrategyKind;

/// True when `path` answers 200.
pub async fn probe(target: &Target, path: &str) -> bool {
    matches!(
        Conn::default()
            .send(target, Method::GET, path, Bytes::new())
            .await,
        Ok((StatusCode::OK, _))
    )
}

/// The server's view of `item` (`None`: it does not know the item).
pub async fn item_view(target: &Target, item: &str) -> anyhow::Result<Option<ItemView>> {
    Conn::default()
        .get_unless_missing(target, &format!("/api/items/{item}"))
        .await
}

/// Creates (or restocks) `item` through the admin API, its sale bound to
/// `strategy`.
pub async fn create_item(
    target: &Target,
    item: &str,
    stock: u64,
    limit: u64,
    strategy: StrategyKind,
    payment_window: Option<Duration>,
) -> anyhow::Result<()> {
    let window_ms = payment_window.map_or(0, |w| w.as_millis() as u64);
    let body = serde_json::json!({"stock": stock, "per_user_limit": limit, "strategy": strategy,
        "payment_window_ms": window_ms})
    .to_string();
    let mut conn = Conn::default();
    let (status, body) = conn
        .send(
            target,
            Method::PUT,
            &format!("/api/items/{item}"),
            Bytes::from(body),
        )
        .await?;
    if !status.is_success() {
        bail!(
            "creating item {item} failed: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// What a purchase answered.
pub(super) enum PurchaseReply {
    /// 201, with the order id of the server's receipt.
    Created(OrderId),
    /// Any other answer, with its error code (empty if the body is not the
    /// server's error shape).
    Refused { status: StatusCode, code: String },
}

/// One keep-alive HTTP/1.1 connection, reopened after a failure.
#[derive(Default)]
pub(super) struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// `GET path`, read as `T`; anything but a 2xx is an error.
    pub async fn get<T: DeserializeOwned>(
        &mut self,
        target: &Target,
        path: &str,
    ) -> anyhow::Result<T> {
        self.get_unless_missing(target, path)
            .await?
            .with_context(|| format!("GET {path}: 404 Not Found"))
    }

    /// As [`Conn::get`], but a 404 is `None`.
    pub async fn get_unless_missing<T: DeserializeOwned>(
        &mut self,
        target: &Target,
        path: &str,
    ) -> anyhow::Result<Option<T>> {
        let (status, body) = self.send(target, Method::GET, path, Bytes::new()).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .with_context(|| format!("GET {path}: not the expected JSON"))
    }

    /// One purchase by `user` of `item` under `strategy`. A 201 is read as
    /// the server's receipt; failing that (a server of another version), as
    /// any body with an `order_id`, so the sale is still counted and its id
    /// still checked in the order log and SQL. A 201 with no order id breaks
    /// the server's contract: it counts under `other`.
    pub async fn purchase(
        &mut self,
        target: &Target,
        item: &str,
        user: &str,
        strategy: StrategyKind,
    ) -> anyhow::Result<PurchaseReply> {
        let path = format!("/api/items/{item}/purchase?user_id={user}&strategy={strategy}");
        let (status, body) = self.send(target, Method::POST, &path, Bytes::new()).await?;
        if status == StatusCode::CREATED {
            #[derive(serde::Deserialize)]
            struct AnyReceipt {
                order_id: OrderId,
            }
            let order_id = serde_json::from_slice::<Purchased>(&body)
                .map(|receipt| receipt.order_id)
                .or_else(|_| serde_json::from_slice::<AnyReceipt>(&body).map(|r| r.order_id));
            if let Ok(order_id) = order_id {
                return Ok(PurchaseReply::Created(order_id));
            }
        }
        let code = serde_json::from_slice::<ErrorBody>(&body)
            .map(|body| body.error.code)
            .unwrap_or_default();
        Ok(PurchaseReply::Refused { status, code })
    }

    /// `POST /api/orders/{order}/pay` for `user`.
    pub async fn pay(
        &mut self,
        target: &Target,
        item: &str,
        user: &str,
        order: OrderId,
    ) -> anyhow::Result<PayAnswer> {
        let body = serde_json::json!({"item": item, "user_id": user}).to_string();
        let path = format!("/api/orders/{order}/pay");
        let (status, body) = self
            .send(target, Method::POST, &path, Bytes::from(body))
            .await?;
        if status == StatusCode::OK {
            return Ok(PayAnswer::Paid);
        }
        let code = serde_json::from_slice::<ErrorBody>(&body)
            .map(|body| body.error.code)
            .unwrap_or_default();
        let expired = OrderState::Expired.ended_code();
        Ok(if status == StatusCode::CONFLICT && code == expired {
            PayAnswer::Expired
        } else {
            PayAnswer::Other(status.as_u16())
        })
    }

    pub async fn send(
        &mut self,
        target: &Target,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let result = self.try_send(target, method, path, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(
        &mut self,
        target: &Target,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = tokio::net::TcpStream::connect(target.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                self.sender.insert(sender)
            }
        };
        sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &target.host);
        if !body.is_empty() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &target.admin_token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
