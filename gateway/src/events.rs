//! `GET /v1/events`: a tenant reads its own events, in log order, a page at a time.
//!
//! `after` is the `next_cursor` of the previous page (the id of its last event), `types` a comma-separated
//! list of event types, `limit` 1 to 100. The key needs `events:read`, and sees the events of the modules it
//! may read (`crm:read` for the CRM's, and so on): the feed is no way around a module scope. Runs as
//! `tessera_event_feed` with the key's tenant bound, so the log's row policy shows the tenant its own events
//! and nothing else. Nothing in an answer describes the rest of the log: ids are opaque, the cursor is an
//! id, and the log's global positions stay inside.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::apikey::{Access, PresentedKey, Scope};
use tessera_core::db::ModuleDb;
use tessera_core::input::QueryParams;
use tessera_core::openapi::{ApiRouter, ToSchema, routes};

pub fn router(db: ModuleDb) -> ApiRouter {
    ApiRouter::new().routes(routes!(list_events)).with_state(db)
}

/// Types asked for at once, at most.
const MAX_TYPES: usize = 20;

/// A module event: a committed change (`crm.deals.update`) or a domain event derived from one
/// (`deal.closed.won`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Event)]
struct EventOut {
    /// The same change always has the same id.
    id: uuid::Uuid,
    /// The event's type.
    #[serde(rename = "type")]
    kind: String,
    /// When the change was committed.
    #[serde(with = "time::serde::rfc3339")]
    commit_time: time::OffsetDateTime,
    /// The change: `table`, `op`, `new` and `old` rows.
    data: serde_json::Value,
}

/// A page of events, in the order they were committed.
#[derive(Debug, Serialize, ToSchema)]
struct EventPage {
    /// Always `list`.
    #[schema(value_type = String)]
    object: &'static str,
    data: Vec<EventOut>,
    has_more: bool,
    /// Pass as `after` for the next page; null on the last page.
    next_cursor: Option<String>,
}

fn parse_types(raw: &str) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid_parameter(
            "types",
            format!("types must be 1 to {MAX_TYPES} comma-separated event types such as deal.closed.won"),
        )
    };
    let types: Vec<String> = raw.split(',').map(str::to_owned).collect();
    let valid = |t: &String| {
        (1..=100).contains(&t.len())
            && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    };
    if types.len() > MAX_TYPES || !types.iter().all(valid) {
        return Err(invalid());
    }
    Ok(types)
}

/// The modules whose events a key may read: those it has a read (or write) scope on.
fn readable_modules(scopes: &[String]) -> Vec<String> {
    scopes
        .iter()
        .filter_map(|s| Scope::parse(s).ok())
        .filter(|s| s.access >= Access::Read && s.module != tessera_core::module::EVENT_FEED_API)
        .map(|s| s.module)
        .collect()
}

/// Lists the tenant's events in commit order, from the modules the key may read.
#[utoipa::path(get, path = "/", tag = "events",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "How many events (1 to 100, default 20)"),
        ("after" = Option<uuid::Uuid>, Query, description = "The `next_cursor` of the previous page"),
        ("types" = Option<String>, Query, pattern = r"^[a-z0-9_.]{1,100}(,[a-z0-9_.]{1,100}){0,19}$",
            description = "Only these event types, comma-separated (at most 20)"),
    ),
    responses((status = 200, description = "A page of events", body = EventPage)))]
async fn list_events(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<EventPage>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let bad_cursor =
        || ApiError::invalid_parameter("after", "after must be a next_cursor value from a previous page");
    let after = q.take("after").map(|v| uuid::Uuid::parse_str(&v).map_err(|_| bad_cursor())).transpose()?;
    let types = q.take("types").map(|t| parse_types(&t)).transpose()?;
    let limit = q.limit()?;
    q.finish()?;
    let rows = db
        .read_with_scopes(&key, async |tx, scopes| {
            let modules = readable_modules(scopes);
            let start: i64 = match after {
                None => 0,
                Some(id) => tx
                    .query_opt(
                        "select seq from events.log where tenant_id = (select core.current_tenant_id()) and id = $1",
                        &[&id],
                    )
                    .await?
                    .map(|r| r.get(0))
                    .ok_or_else(bad_cursor)?,
            };
            Ok(tx
                .query(
                    "select id, type, commit_time, data from events.log
                      where tenant_id = (select core.current_tenant_id()) and seq > $1
                        and split_part(data->>'table', '.', 1) = any($2)
                        and ($3::text[] is null or type = any($3))
                      order by seq limit $4",
                    &[&start, &modules, &types, &(limit + 1)],
                )
                .await?)
        })
        .await?;
    let has_more = rows.len() as i64 > limit;
    let data: Vec<EventOut> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|r| EventOut { id: r.get(0), kind: r.get(1), commit_time: r.get(2), data: r.get(3) })
        .collect();
    let next_cursor = if has_more { data.last().map(|e| e.id.to_string()) } else { None };
    Ok(Json(EventPage { object: "list", data, has_more, next_cursor }))
}
