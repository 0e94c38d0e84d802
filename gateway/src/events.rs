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

/// The number of the tenant's event `$1` (a cursor), looked for in the CANDIDATES chunks that start last at or
/// before it (ids begin with their commit's time, so the chunk that holds it is one of the few latest to
/// start before it), and how many candidates there were.
const CURSOR_SEQ: &str = "with candidates as (
         select first_seq, max_id, ids from events.log_chunks
          where tenant_id = (select core.current_tenant_id()) and min_id <= $1
          order by min_id desc limit $2
     )
     select (select count(*) from candidates),
            (select k.first_seq + x.n - 1
               from candidates k cross join lateral unnest(k.ids) with ordinality as x(id, n)
              where k.max_id >= $1 and x.id = $1
              limit 1)";

/// Chunks a cursor is first looked for in.
const CANDIDATES: i64 = 64;

/// The same among all the tenant's chunks whose id range holds it and that start at most a day before it
/// (`$2`): for a cursor the candidates do not hold when there were as many as asked for (many chunks of one
/// millisecond, or a clock set back). The day bounds what a made-up cursor costs.
const CURSOR_SEQ_NEARBY: &str = "select k.first_seq + x.n - 1
       from events.log_chunks k cross join lateral unnest(k.ids) with ordinality as x(id, n)
      where k.tenant_id = (select core.current_tenant_id()) and k.min_id <= $1 and k.min_id >= $2
        and k.max_id >= $1 and x.id = $1
      limit 1";

/// The smallest id of the millisecond a day before `id`'s (ids begin with their commit's Unix milliseconds).
fn a_day_before(id: uuid::Uuid) -> uuid::Uuid {
    const DAY_MILLIS: u64 = 86_400_000;
    let bytes = id.as_bytes();
    let mut millis = [0u8; 8];
    millis[2..].copy_from_slice(&bytes[..6]);
    let floor = u64::from_be_bytes(millis).saturating_sub(DAY_MILLIS);
    let mut out = [0u8; 16];
    out[..6].copy_from_slice(&floor.to_be_bytes()[2..]);
    uuid::Uuid::from_bytes(out)
}

/// Part of a page: the tenant's next `$5` log chunks after number `$1` (how many there were, the last one's
/// end), and their first `$4` events of the readable modules (`$2`) and the asked types (`$3`, null for
/// all), in log order; one row of nulls after the first two columns when none is. The page reads window
/// after window, each twice the one before up to MAX_WINDOW chunks, until it is full or the log ends: a
/// query unpacks a bounded number of chunks (only those that hold an asked type), and a sparse page over
/// a long log takes few of them.
const PAGE_WINDOW: &str = "with chunks as (
         select first_seq, last_seq, ids, types, commit_times, data from events.log_chunks
          where tenant_id = (select core.current_tenant_id()) and last_seq > $1
          order by last_seq limit $5
     ), bounds as (
         select count(*) as chunks, max(last_seq) as window_end from chunks
     )
     select b.chunks, b.window_end, e.id, e.type, e.commit_time, e.data
       from bounds b
       left join lateral (
           select k.first_seq + x.n - 1 as seq, x.id, x.type, x.commit_time, x.data::json as data
             from chunks k
            cross join lateral unnest(k.ids, k.types, k.commit_times, k.data)
                  with ordinality as x(id, type, commit_time, data, n)
            where ($3::text[] is null or k.types && $3) and k.first_seq + x.n - 1 > $1
              and split_part(x.data::json->>'table', '.', 1) = any($2)
              and ($3::text[] is null or x.type = any($3))
            order by k.last_seq, x.n limit $4
       ) e on true
      order by e.seq";

/// Chunks in a page's first window, and in its largest.
const FIRST_WINDOW: i64 = 8;
const MAX_WINDOW: i64 = 1024;

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
                Some(id) => {
                    let row = tx.query_one(CURSOR_SEQ, &[&id, &CANDIDATES]).await?;
                    let (candidates, seq): (i64, Option<i64>) = (row.get(0), row.get(1));
                    let seq = match seq {
                        None if candidates == CANDIDATES => tx
                            .query_opt(CURSOR_SEQ_NEARBY, &[&id, &a_day_before(id)])
                            .await?
                            .map(|r| r.get(0)),
                        seq => seq,
                    };
                    seq.ok_or_else(bad_cursor)?
                }
            };
            // One more than asked for tells whether there is more.
            let mut page = Vec::new();
            let mut from = start;
            let mut window = FIRST_WINDOW;
            loop {
                let wanted = limit + 1 - page.len() as i64;
                let rows = tx.query(PAGE_WINDOW, &[&from, &modules, &types, &wanted, &window]).await?;
                let (chunks, window_end): (i64, Option<i64>) =
                    rows.first().map_or((0, None), |r| (r.get(0), r.get(1)));
                page.extend(rows.into_iter().filter(|r| r.get::<_, Option<uuid::Uuid>>(2).is_some()));
                match window_end {
                    Some(end) if chunks == window && (page.len() as i64) <= limit => from = end,
                    _ => break,
                }
                window = (window * 2).min(MAX_WINDOW);
            }
            Ok(page)
        })
        .await?;
    let has_more = rows.len() as i64 > limit;
    let data: Vec<EventOut> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|r| EventOut { id: r.get(2), kind: r.get(3), commit_time: r.get(4), data: r.get(5) })
        .collect();
    let next_cursor = if has_more { data.last().map(|e| e.id.to_string()) } else { None };
    Ok(Json(EventPage { object: "list", data, has_more, next_cursor }))
}
