//! `GET /v1/events`: a tenant reads its own events, in log order, a page at a time.
//!
//! `after` is the `next_cursor` of the previous page (the last event's log position), `types` a
//! comma-separated list of event types, `limit` 1 to 100. Runs as `tessera_event_feed` with the key's tenant
//! bound, so the log's row policy shows the tenant its own events and nothing else; needs `events:read`.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::ModuleDb;
use tessera_core::input::QueryParams;

pub fn router(db: ModuleDb) -> axum::Router {
    axum::Router::new().route("/", get(list_events)).with_state(db)
}

/// Types asked for at once, at most.
const MAX_TYPES: usize = 20;

#[derive(Debug, Serialize)]
struct EventOut {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    kind: String,
    /// The event's position in the log; pass it as `after` to read what follows.
    cursor: String,
    #[serde(with = "time::serde::rfc3339")]
    commit_time: time::OffsetDateTime,
    commit_lsn: String,
    data: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct EventPage {
    object: &'static str,
    data: Vec<EventOut>,
    has_more: bool,
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

async fn list_events(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<EventPage>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let after = match q.take("after") {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid_parameter("after", "after must be a next_cursor value from a previous page")
        })?,
    };
    let types = q.take("types").map(|t| parse_types(&t)).transpose()?;
    let limit = q.limit()?;
    q.finish()?;
    let rows = db
        .read(&key, async |tx| {
            Ok(tx
                .query(
                    "select id, type, seq, commit_time, commit_lsn::text, data from events.log
                      where seq > $1 and ($2::text[] is null or type = any($2))
                      order by seq limit $3",
                    &[&after, &types, &(limit + 1)],
                )
                .await?)
        })
        .await?;
    let has_more = rows.len() as i64 > limit;
    let data: Vec<EventOut> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|r| EventOut {
            id: r.get(0),
            kind: r.get(1),
            cursor: r.get::<_, i64>(2).to_string(),
            commit_time: r.get(3),
            commit_lsn: r.get(4),
            data: r.get(5),
        })
        .collect();
    let next_cursor = if has_more { data.last().map(|e| e.cursor.clone()) } else { None };
    Ok(Json(EventPage { object: "list", data, has_more, next_cursor }))
}
