//! Shared application state handed to every handler.

use std::time::Duration;

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    /// Upper bound on a request's time.
    pub request_timeout: Duration,
}
