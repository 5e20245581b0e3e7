//! HTTP handlers, one module per resource.

pub mod alarms;
pub mod api_keys;
pub mod assets;
pub mod attachments;
pub mod audit;
pub mod dead_letters;
pub mod devices;
pub mod docs;
pub mod health;
pub mod live;
pub mod login;
pub mod mfa;
pub mod parts;
pub mod password;
pub mod password_reset;
pub mod pm;
pub mod privacy;
pub mod readings;
pub mod registry;
pub mod reliability;
pub mod roles;
pub mod rules;
pub mod sessions;
pub mod sla;
pub mod teams;
pub mod users;
pub mod webhooks;
pub mod work_orders;

/// A JSON answer written into a buffer of `capacity` bytes reserved up front. The long lists
/// answer tens of kilobytes; a buffer that starts small is grown and copied again and again on
/// the way there, which showed in the list benchmark's profile.
#[derive(Debug)]
pub struct SizedJson<T> {
    pub value: T,
    pub capacity: usize,
}

impl<T: serde::Serialize> axum::response::IntoResponse for SizedJson<T> {
    fn into_response(self) -> axum::response::Response {
        let mut body = Vec::with_capacity(self.capacity);
        match serde_json::to_writer(&mut body, &self.value) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => crate::error::ApiError::from(anyhow::anyhow!("encoding the answer: {e}"))
                .into_response(),
        }
    }
}

/// Timestamps in JSON as chrono's own `Serialize` writes them (RFC 3339, UTC as `Z`, as many
/// fraction digits as needed: 0, 3, 6 or 9), formatted into a string first. chrono's own
/// passes the text to serde_json a character at a time, which showed in the list benchmark's
/// profile. For `#[serde(serialize_with = "...")]`.
pub(crate) mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn option<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serialize(at, s),
            None => s.serialize_none(),
        }
    }
}

/// A `LIKE`/`ILIKE` pattern matching text that contains `text` (trimmed), its wildcards and
/// escape character taken literally.
pub(crate) fn contains_pattern(text: &str) -> String {
    format!(
        "%{}%",
        text.trim()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_take_wildcards_literally() {
        assert_eq!(super::contains_pattern(" 50%_off\\ "), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        use chrono::{DateTime, TimeZone, Utc};
        #[derive(serde::Serialize)]
        struct Ours {
            #[serde(serialize_with = "super::rfc3339::serialize")]
            at: DateTime<Utc>,
            #[serde(serialize_with = "super::rfc3339::option")]
            maybe: Option<DateTime<Utc>>,
        }
        #[derive(serde::Serialize)]
        struct Chronos {
            at: DateTime<Utc>,
            maybe: Option<DateTime<Utc>>,
        }
        let base = Utc.with_ymd_and_hms(2026, 3, 29, 1, 2, 3).unwrap();
        for nanos in [0, 120_000_000, 123_456_000, 123_456_789, 1] {
            let at = base + chrono::Duration::nanoseconds(nanos);
            for maybe in [None, Some(at)] {
                assert_eq!(
                    serde_json::to_string(&Ours { at, maybe }).unwrap(),
                    serde_json::to_string(&Chronos { at, maybe }).unwrap()
                );
            }
        }
    }
}

/// A page of a list sorted by a text key and then the id (parts by SKU, schedules by name):
/// where the next page starts, handed out as an opaque `cursor`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyCursor {
    pub key: String,
    pub id: uuid::Uuid,
}

/// Default and largest page of the lists paged by [`KeyCursor`].
pub(crate) const DEFAULT_PAGE: i64 = 100;
pub(crate) const MAX_PAGE: i64 = 500;

impl KeyCursor {
    /// The page size and the position from `limit` and `cursor`; each bad one is added to
    /// `errors`.
    pub(crate) fn parse(
        limit: Option<i64>,
        cursor: Option<&str>,
        errors: &mut crate::error::FieldErrors,
    ) -> (i64, Option<KeyCursor>) {
        use base64::Engine as _;
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            errors.add("limit", format!("must be between 1 and {MAX_PAGE}"));
        }
        let cursor = cursor.and_then(|c| {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice::<KeyCursor>(&b).ok());
            if decoded.is_none() {
                errors.add("cursor", "is not a cursor this list handed out");
            }
            decoded
        });
        (limit, cursor)
    }

    /// Cuts `items` (fetched with `LIMIT limit + 1`) to the page and hands out the cursor of
    /// the next one, `None` on the last page.
    pub(crate) fn next<T>(
        items: &mut Vec<T>,
        limit: i64,
        key: impl Fn(&T) -> (String, uuid::Uuid),
    ) -> Option<String> {
        use base64::Engine as _;
        let page = usize::try_from(limit).unwrap_or(usize::MAX);
        if items.len() <= page {
            return None;
        }
        items.truncate(page);
        let (key, id) = key(items.last()?);
        let cursor = serde_json::to_vec(&KeyCursor { key, id }).ok()?;
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor))
    }
}

/// Reads a page of a list sorted newest first by a `bigint` id (the audit log, dead letters):
/// adds the cursor (`before`: ids below it) and the order to `query`, which ends in a
/// condition, runs it in a transaction of `tenant`, and answers the page with the `next_cursor`
/// of the page after it (`None` on the last page).
pub(crate) async fn newest_by_id<T>(
    pool: &sqlx::PgPool,
    tenant: uuid::Uuid,
    mut query: sqlx::QueryBuilder<'_, sqlx::Postgres>,
    before: Option<i64>,
    limit: i64,
    id: fn(&T) -> i64,
) -> Result<(Vec<T>, Option<String>), crate::error::ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    if let Some(before) = before {
        query.push(" AND id < ").push_bind(before);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let mut items: Vec<T> = query.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let more = items.len() as i64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more
        .then(|| items.last().map(|e| id(e).to_string()))
        .flatten();
    Ok((items, next_cursor))
}
