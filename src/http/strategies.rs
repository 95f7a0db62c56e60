//! `GET /api/strategies`: the strategy catalogue as the API shows it, each
//! strategy with what guards it and whether this instance serves it. The
//! status page builds its race controls from it.

use axum::extract::State;

use crate::state::AppState;
use crate::strategy::StrategyKind;

/// The strategy catalogue as `GET /api/strategies` shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Catalogue {
    /// Every strategy, in the catalogue's order.
    pub strategies: Vec<CatalogueEntry>,
    /// What a purchase naming none gets.
    pub default: StrategyKind,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CatalogueEntry {
    pub name: StrategyKind,
    /// What keeps two buyers apart.
    pub guard: &'static str,
    /// Whether this instance serves it.
    pub enabled: bool,
}

/// `GET /api/strategies`: the catalogue, in order: each strategy's name, what
/// guards it, and whether this instance serves it; and the default. The
/// status page builds its race controls from it.
#[utoipa::path(
    get,
    path = "/api/strategies",
    tag = "purchase",
    responses((status = 200, description = "The strategy catalogue.", body = Catalogue)),
)]
pub(super) async fn strategies(State(state): State<AppState>) -> axum::Json<Catalogue> {
    let enabled = state.strategies.names();
    axum::Json(Catalogue {
        strategies: StrategyKind::ALL
            .iter()
            .map(|&kind| CatalogueEntry {
                name: kind,
                guard: kind.guard(),
                enabled: enabled.contains(&kind.as_str()),
            })
            .collect(),
        default: state.default_strategy,
    })
}
