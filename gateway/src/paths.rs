//! Where a request goes, as the client sent it: the gateway's layers sit inside nested routers, which see
//! the path without its prefix.

use axum::extract::{OriginalUri, Request};
use axum::http::Uri;

/// The request's URI as the client sent it.
pub(crate) fn original_uri(request: &Request) -> &Uri {
    match request.extensions().get::<OriginalUri>() {
        Some(original) => &original.0,
        None => request.uri(),
    }
}

/// The API a path is under: the segment after `/v1/` (`crm` for `/v1/crm/deals/…`).
pub(crate) fn api_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/")?.split('/').next()
}

/// The API a request is under, if it is one of `names`.
pub(crate) fn named_api(request: &Request, names: &[&'static str]) -> Option<&'static str> {
    let api = api_of(original_uri(request).path())?;
    names.iter().find(|name| **name == api).copied()
}
