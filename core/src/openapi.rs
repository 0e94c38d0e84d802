//! The API contract's shared parts, for the OpenAPI 3.1 document the gateway serves at `/v1/openapi.json`.
//!
//! Each module declares its routes with [`routes!`] over handlers annotated with `#[utoipa::path]`, so a
//! route and its documentation are one declaration: a handler that is not documented is not routed. What
//! every route shares (authentication, the error responses the gateway's layers give, `Idempotency-Key`) is
//! added to the whole document once, by the gateway.

pub use utoipa::openapi::RefOr;
pub use utoipa::openapi::schema::Schema;
pub use utoipa::{IntoParams, PartialSchema, ToSchema};
pub use utoipa_axum::router::OpenApiRouter as ApiRouter;
pub use utoipa_axum::routes;

use crate::input::{DEFAULT_LIMIT, MAX_LIMIT};

/// The query parameters of every list: `limit` and `after`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// How many items to return, from 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page: the list continues after it.
    #[param(min_length = 1)]
    pub after: Option<String>,
}

/// The id of a record in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdParam {
    /// The record's id.
    pub id: uuid::Uuid,
}

const _: () = assert!(DEFAULT_LIMIT == 20 && MAX_LIMIT == 100, "PageParams documents these limits");

/// The schema of every error body.
pub fn problem_schema() -> (String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) {
    use utoipa::{PartialSchema, ToSchema};
    (crate::problem::ProblemBody::name().into_owned(), crate::problem::ProblemBody::schema())
}

/// A string that is one of `values` (the same list the parser checks against).
pub fn string_enum(values: &[&str]) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied())).into()
}

/// A schema named `$name` for a string that is one of `$values`, e.g. a status column's allowed values.
#[macro_export]
macro_rules! string_enum_schema {
    ($(#[$doc:meta])* $name:ident = $values:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl $crate::openapi::PartialSchema for $name {
            fn schema() -> $crate::openapi::RefOr<$crate::openapi::Schema> {
                $crate::openapi::string_enum($values)
            }
        }

        impl $crate::openapi::ToSchema for $name {}
    };
}

/// A non-negative decimal as [`crate::input::Fields::decimal`] takes it: a string with at most `int_digits`
/// digits before the point and `frac_digits` after (`"1200.50"`, exact; answers always use this form), or
/// a JSON number in range (whose decimals the description limits: a schema cannot say it exactly).
pub fn decimal(int_digits: u8, frac_digits: u8) -> Schema {
    digits(int_digits, frac_digits, false)
}

/// The same, above zero (a quantity, a payment); the string form's pattern does not say so, the
/// description does.
pub fn positive_decimal(int_digits: u8, frac_digits: u8) -> Schema {
    digits(int_digits, frac_digits, true)
}

fn digits(int_digits: u8, frac_digits: u8, positive: bool) -> Schema {
    let what = if positive { "A decimal above zero" } else { "A non-negative decimal" };
    decimal_matching(
        format!("^[0-9]{{1,{int_digits}}}(\\.[0-9]{{1,{frac_digits}}})?$"),
        positive,
        Maximum::Below(10f64.powi(i32::from(int_digits))),
        format!(
            "{what} with up to {int_digits} digits before the point and {frac_digits} after, as a string \
             (exact) or a number"
        ),
    )
}

/// The largest number a decimal may be.
pub enum Maximum {
    Below(f64),
    AtMost(f64),
}

/// A decimal sent as a string matching `pattern` or as a number from 0 (or above 0, when `positive`) to
/// `maximum`.
pub fn decimal_matching(pattern: String, positive: bool, maximum: Maximum, description: String) -> Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
    let text = ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern));
    let number = ObjectBuilder::new().schema_type(Type::Number);
    let number = if positive { number.exclusive_minimum(Some(0.0)) } else { number.minimum(Some(0.0)) };
    let number = match maximum {
        Maximum::Below(max) => number.exclusive_maximum(Some(max)),
        Maximum::AtMost(max) => number.maximum(Some(max)),
    };
    AnyOfBuilder::new().item(text).item(number).description(Some(description)).into()
}
