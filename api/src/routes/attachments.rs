//! Files attached to work orders, stored on local disk under `[api] attachments_dir`.
//!
//! - `POST /api/v1/work-orders/{id}/attachments?filename=pump.jpg`: the body is the file's
//!   bytes (any `Content-Type`; not multipart), at most `[api] attachment_max_bytes` (413
//!   beyond). Its type is read from its bytes ([`sniff`]): PNG, JPEG, GIF, WebP, PDF, or text
//!   (UTF-8 without control characters but tabs and line ends: `.txt`, `.csv`, `.log`);
//!   anything else is refused (415), whatever the client called it.
//! - `GET /api/v1/work-orders/{id}/attachments/{attachment}`: the bytes, with the type found
//!   and `Content-Disposition: attachment`.
//! - `DELETE /api/v1/work-orders/{id}/attachments/{attachment}`: admins, managers and the
//!   uploader.
//!
//! Uploading needs who may comment (every role but viewer; a requester on their own
//! requests); reading, who may see the work order. The work order's detail lists its
//! attachments. A file is written to a temporary name, synced and renamed before its row
//! commits; a failed commit removes it.

use std::path::{Path as FsPath, PathBuf};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::RequestMeta;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::routes::work_orders::{can_see, record_change};
use crate::work_order_flow::Role;

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Attachment {
    pub id: Uuid,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub uploaded_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

pub const COLUMNS: &str = "id, filename, content_type, size_bytes, uploaded_by, created_at";

/// The type of a file from its first bytes, or `None` when it is not one we keep. Text must
/// be UTF-8 without control characters other than tab, line feed and carriage return.
pub fn sniff(bytes: &[u8], filename: &str) -> Option<&'static str> {
    const SIGNATURES: [(&[u8], &str); 5] = [
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
    ];
    if let Some((_, kind)) = SIGNATURES
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
    {
        return Some(kind);
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    let text = std::str::from_utf8(bytes).ok()?;
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return None;
    }
    let lower = filename.to_ascii_lowercase();
    Some(if lower.ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    })
}

/// A file name fit to store and to send back in a header: its last path component, without
/// control characters, quotes or backslashes, 1-200 characters.
pub fn clean_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name).trim();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\'))
        .take(200)
        .collect();
    let cleaned = cleaned.trim().to_owned();
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then_some(cleaned)
}

fn stored_path(dir: &FsPath, tenant: Uuid, id: Uuid) -> PathBuf {
    dir.join(tenant.to_string()).join(id.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    pub filename: String,
}

pub async fn upload(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Attachment>), ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let role = can_see(&mut tx, &auth, id).await?;
    if role == Role::Viewer {
        return Err(ApiError::ForbiddenByPolicy(
            "viewers cannot attach files to work orders".into(),
        ));
    }
    let Some(filename) = clean_filename(&q.filename) else {
        return Err(ApiError::field(
            "filename",
            "name the file (1-200 characters), e.g. ?filename=pump.jpg",
        ));
    };
    if body.is_empty() {
        return Err(ApiError::field(
            "body",
            "send the file's bytes as the request body",
        ));
    }
    let Some(content_type) = sniff(&body, &filename) else {
        return Err(ApiError::UnsupportedMediaType(
            "attachments may be PNG, JPEG, GIF or WebP images, PDF documents or UTF-8 text".into(),
        ));
    };
    let attachment = Uuid::new_v4();
    let path = stored_path(&state.attachments_dir, tenant, attachment);
    write_file(&path, &body)
        .await
        .map_err(|e| anyhow::anyhow!("storing attachment {}: {e}", path.display()))?;
    let digest: [u8; 32] = Sha256::digest(&body).into();
    let result = async {
        sqlx::query(
            "INSERT INTO work_order_attachments (id, tenant_id, work_order_id, filename,
                                                 content_type, size_bytes, sha256, uploaded_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(attachment)
        .bind(tenant)
        .bind(id)
        .bind(&filename)
        .bind(content_type)
        .bind(body.len() as i64)
        .bind(&digest[..])
        .bind(auth.user)
        .execute(&mut *tx)
        .await?;
        let detail = json!({
            "attachment": attachment,
            "filename": filename,
            "content_type": content_type,
            "size_bytes": body.len(),
        });
        record_change(
            &mut tx,
            &auth,
            &meta,
            id,
            ("attachment_added", "work_order.attach"),
            detail,
        )
        .await?;
        let row = sqlx::query_as::<_, Attachment>(&format!(
            "SELECT {COLUMNS} FROM work_order_attachments WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(attachment)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(row)
    }
    .await;
    match result {
        Ok(row) => Ok((StatusCode::CREATED, Json(row))),
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(e.into())
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it into place.
async fn write_file(path: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("stored paths have a parent");
    tokio::fs::create_dir_all(dir).await?;
    let temporary = path.with_extension("part");
    let mut file = tokio::fs::File::create(&temporary).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&temporary, path).await
}

async fn find(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    work_order: Uuid,
    attachment: Uuid,
) -> Result<Attachment, ApiError> {
    sqlx::query_as::<_, Attachment>(&format!(
        "SELECT {COLUMNS} FROM work_order_attachments
         WHERE tenant_id = $1 AND work_order_id = $2 AND id = $3"
    ))
    .bind(tenant)
    .bind(work_order)
    .bind(attachment)
    .fetch_optional(conn)
    .await?
    .ok_or(ApiError::NotFound)
}

pub async fn download(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((id, attachment)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    can_see(&mut tx, &auth, id).await?;
    let row = find(&mut tx, tenant, id, attachment).await?;
    tx.commit().await?;
    let path = stored_path(&state.attachments_dir, tenant, attachment);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| anyhow::anyhow!("reading attachment {}: {e}", path.display()))?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&row.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    let disposition = format!(
        "attachment; filename=\"{}\"",
        row.filename
            .replace(|c: char| !c.is_ascii() || c.is_ascii_control(), "_")
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

pub async fn delete(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path((id, attachment)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let role = can_see(&mut tx, &auth, id).await?;
    let row = find(&mut tx, tenant, id, attachment).await?;
    if !role.supervises() && row.uploaded_by != Some(auth.user) {
        return Err(ApiError::ForbiddenByPolicy(
            "only admins, managers and the uploader may remove an attachment".into(),
        ));
    }
    sqlx::query("DELETE FROM work_order_attachments WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(attachment)
        .execute(&mut *tx)
        .await?;
    let detail = json!({ "attachment": attachment, "filename": row.filename });
    record_change(
        &mut tx,
        &auth,
        &meta,
        id,
        ("attachment_removed", "work_order.detach"),
        detail,
    )
    .await?;
    tx.commit().await?;
    let path = stored_path(&state.attachments_dir, tenant, attachment);
    if let Err(e) = tokio::fs::remove_file(&path).await {
        tracing::warn!(error = %e, path = %path.display(), "removed attachment's file is left on disk");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest", "x.txt"), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0", "a"), Some("image/jpeg"));
        assert_eq!(sniff(b"%PDF-1.7", "a.exe"), Some("application/pdf"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 ", "a"), Some("image/webp"));
        assert_eq!(
            sniff(b"a,b\n1,2\n", "Data.CSV"),
            Some("text/csv; charset=utf-8")
        );
        assert_eq!(
            sniff("Lager getauscht\n".as_bytes(), "note"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            sniff(b"MZ\x90\x00\x03", "report.pdf"),
            None,
            "an executable"
        );
        assert_eq!(sniff(b"<html>\x00", "a.txt"), None);
        assert_eq!(sniff(&[0xff, 0xfe, 0x00], "a.txt"), None);
    }

    #[test]
    fn file_names_lose_their_paths_and_quotes() {
        assert_eq!(
            clean_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            clean_filename("C:\\temp\\pump \"1\".jpg").as_deref(),
            Some("pump 1.jpg")
        );
        assert_eq!(clean_filename("a\r\nb.txt").as_deref(), Some("ab.txt"));
        assert_eq!(clean_filename(".."), None);
        assert_eq!(clean_filename("   "), None);
        assert_eq!(clean_filename(&"x".repeat(300)).map(|n| n.len()), Some(200));
    }
}
