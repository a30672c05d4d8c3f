//! The HTTP routes: the page, and the JSON API it uses (documented in the README).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::io::AsyncWriteExt;

use crate::job::JobOptions;

use super::jobs::{self, Inputs, JobId, Upload};
use super::{guard, AppState};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// The page's policy: its own scripts and styles only, nothing from the network, and no other
/// site may frame it.
const PAGE_CSP: &str = "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; \
                        connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Every route, behind the Host/Origin guard.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = usize::try_from(state.config.max_upload_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route("/api/info", get(info))
        .route("/api/jobs", post(create_job).layer(DefaultBodyLimit::max(limit)))
        .route("/api/jobs/{id}", get(job_status).delete(delete_job))
        .route("/api/jobs/{id}/events", get(job_events))
        .route("/api/jobs/{id}/rerun", post(rerun_job))
        .route("/api/jobs/{id}/files/{name}", get(job_file))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::from_fn_with_state(state.clone(), guard_requests))
        .with_state(state)
}

/// An API error: `{"error": "..."}` with a 4xx or 5xx status.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Refuses a foreign `Host` (DNS rebinding) and a cross-site state-changing request.
async fn guard_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let served_name = state.config.host.to_string();
    if !guard::host_allowed(host, state.addr.port(), &served_name) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("Host `{host}` is not this server's address: refused (open {})", state.addr),
        )
        .into_response();
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
        let site = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
        if !guard::origin_allowed(origin, host, site) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "a request from another site (Origin `{}`) may not change jobs: refused",
                    origin.unwrap_or("?")
                ),
            )
            .into_response();
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn index() -> Response {
    let mut r = asset(INDEX_HTML, "text/html; charset=utf-8");
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// What the page needs to draw its controls: platforms, limits, defaults.
async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let platforms: Vec<serde_json::Value> = crate::platform::Platform::ALL
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name(),
                "target_lufs": p.target_lufs(),
                "ceiling_dbtp": p.ceiling_dbtp(),
            })
        })
        .collect();
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "platforms": platforms,
        "max_upload_bytes": state.config.max_upload_bytes,
        "jobs": state.config.jobs,
        "defaults": JobOptions::default(),
    }))
}

/// Removes a job's folder unless the upload completed (so a refused or broken upload leaves
/// nothing on disk).
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `POST /api/jobs`: multipart `mix`, zero or more `reference`, optional `options` (JSON).
async fn create_job(State(state): State<Arc<AppState>>, headers: HeaderMap, multipart: Multipart) -> Response {
    match receive_job(&state, &headers, multipart).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn receive_job(state: &Arc<AppState>, headers: &HeaderMap, mut multipart: Multipart) -> ApiResult<Response> {
    let limit = state.config.max_upload_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let id = JobId::random().map_err(internal)?;
    let dir = state.jobs.new_job_dir(&id).map_err(internal)?;
    let mut cleanup = DirGuard(Some(dir.clone()));
    let mut mix: Option<Upload> = None;
    let mut references: Vec<Upload> = Vec::new();
    let mut options_text: Option<String> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, limit)),
        };
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "mix" | "reference" => {
                if name == "mix" && mix.is_some() {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "more than one `mix` file: send one mix per job",
                    ));
                }
                let original = original_name(field.file_name(), &name);
                let stored = if name == "mix" {
                    format!("mix{}", extension_of(&original))
                } else {
                    format!("reference{}{}", references.len() + 1, extension_of(&original))
                };
                let path = dir.join("in").join(stored);
                save_field(field, &path, limit).await?;
                let upload = Upload { path, original_name: original };
                if name == "mix" {
                    mix = Some(upload);
                } else {
                    references.push(upload);
                }
            }
            "options" => {
                let text = field.text().await.map_err(|e| multipart_error(e, limit))?;
                options_text = Some(text);
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown form field `{other}` (the fields are mix, reference, options)"),
                ))
            }
        }
    }
    let Some(mix) = mix else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no mix given: send the mix as the `mix` file field"));
    };
    let options = parse_options(state, options_text.as_deref(), !references.is_empty())?;
    let inputs = Inputs { mix, references };
    cleanup.0 = None;
    let job = jobs::start(state, id, dir, inputs, options);
    Ok(accepted(job.id.as_str()))
}

fn accepted(id: &str) -> Response {
    let url = format!("/api/jobs/{id}");
    (StatusCode::ACCEPTED, [(header::LOCATION, url.clone())], Json(serde_json::json!({ "id": id, "url": url })))
        .into_response()
}

/// Streams one uploaded file to `path`, refusing it (413) once the request passes the limit.
async fn save_field(
    mut field: axum::extract::multipart::Field<'_>,
    path: &std::path::Path,
    limit: u64,
) -> ApiResult<()> {
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(path).await.map_err(internal)?;
    loop {
        match field.chunk().await {
            Ok(Some(bytes)) => file.write_all(&bytes).await.map_err(internal)?,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, limit)),
        }
    }
    file.flush().await.map_err(internal)?;
    Ok(())
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the upload is larger than this server takes ({} MiB; start it with --max-upload-mb to allow more)",
            limit >> 20
        ),
    )
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, format!("the upload is not a valid form: {}", e.body_text()))
    }
}

fn internal(e: std::io::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("server error: {e}"))
}

/// The name a file had on the user's machine, as shown in messages: its last path component,
/// without control characters (never used as a path).
fn original_name(file_name: Option<&str>, field: &str) -> String {
    let raw = file_name.unwrap_or(field);
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let clean: String = last.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.trim().is_empty() {
        field.to_string()
    } else {
        clean
    }
}

/// `.flac` of `song.FLAC`: a short alphanumeric extension (the decoder's format hint), or none.
fn extension_of(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((_, ext)) if !ext.is_empty() && ext.len() <= 8 && ext.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            format!(".{}", ext.to_ascii_lowercase())
        }
        _ => String::new(),
    }
}

/// The job's options: the JSON object, validated as the command line validates its options,
/// with what a web client may not do refused (a target model is a file path) and the memory
/// budget held to the server's per-job budget (it changes speed, never the master).
fn parse_options(state: &AppState, text: Option<&str>, has_refs: bool) -> ApiResult<JobOptions> {
    let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, msg);
    let mut options = match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => JobOptions::default(),
        Some(t) => {
            let value: serde_json::Value =
                serde_json::from_str(t).map_err(|e| bad(format!("options: not valid JSON: {e}")))?;
            if !value.is_object() {
                return Err(bad("options: must be a JSON object, e.g. {\"lufs\": -14}".into()));
            }
            JobOptions::from_json_value(value, "options").map_err(|e| bad(e.to_string()))?
        }
    };
    if let Some(t) = &options.target {
        if has_refs {
            return Err(bad("--target: cannot be used with --ref: choose a reference or a learned target".into()));
        }
        if t.contains(['/', '\\', ':']) || t.to_ascii_lowercase().ends_with(".json") {
            return Err(bad(format!("--target: `{t}`: the web app takes the name of a built-in target, not a file")));
        }
    }
    options.memory_budget = options.memory_budget.min(state.config.job_memory_mib);
    Ok(options)
}

fn job_of(state: &AppState, id: &str) -> ApiResult<Arc<jobs::Job>> {
    JobId::parse(id)
        .and_then(|id| state.jobs.get(&id))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such job (it may have been deleted or expired)"))
}

/// `GET /api/jobs/ID`.
async fn job_status(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_of(&state, &id)?;
    let status = job.status.borrow().clone();
    Ok(Json(status).into_response())
}

/// `GET /api/jobs/ID/events`: the status as server-sent events (`event: status`), one per
/// change, ending after `done` or `failed`.
async fn job_events(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_of(&state, &id)?;
    let rx = job.status.subscribe();
    let stream = futures_util::stream::unfold((rx, false, true), |(mut rx, ended, first)| async move {
        if ended || (!first && rx.changed().await.is_err()) {
            return None;
        }
        let status = rx.borrow_and_update().clone();
        let end = matches!(status.state, "done" | "failed");
        let event = Event::default().event("status").json_data(&status).unwrap_or_else(|_| Event::default());
        Some((Ok::<_, Infallible>(event), (rx, end, false)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// `POST /api/jobs/ID/rerun` with a JSON object of options: the same uploads, mastered again
/// as a new job (the page's controls).
async fn rerun_job(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let parent = job_of(&state, &id)?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "options: not UTF-8"))?;
    let options = parse_options(&state, Some(text), !parent.inputs.references.is_empty())?;
    let new_id = JobId::random().map_err(internal)?;
    let dir = state.jobs.new_job_dir(&new_id).map_err(internal)?;
    let mut cleanup = DirGuard(Some(dir.clone()));
    let copy = |u: &Upload| -> ApiResult<Upload> {
        let name = u.path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("input"));
        let to = dir.join("in").join(name);
        if std::fs::hard_link(&u.path, &to).is_err() {
            std::fs::copy(&u.path, &to).map_err(|_| {
                ApiError::new(StatusCode::GONE, "the job's uploads are gone (deleted or expired): upload them again")
            })?;
        }
        Ok(Upload { path: to, original_name: u.original_name.clone() })
    };
    let inputs = Inputs {
        mix: copy(&parent.inputs.mix)?,
        references: parent.inputs.references.iter().map(copy).collect::<ApiResult<_>>()?,
    };
    cleanup.0 = None;
    let job = jobs::start(&state, new_id, dir, inputs, options);
    Ok(accepted(job.id.as_str()))
}

/// `DELETE /api/jobs/ID`: forgets the job and removes its files.
async fn delete_job(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> ApiResult<Response> {
    let job = job_of(&state, &id)?;
    state.jobs.remove(&job.id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/jobs/ID/files/NAME`: one output (`master`, `settings`, `report`, an export format).
async fn job_file(
    State(state): State<Arc<AppState>>,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> ApiResult<Response> {
    let job = job_of(&state, &id)?;
    let status = job.status.borrow().clone();
    match status.state {
        "done" => {}
        "failed" => {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, status.error.unwrap_or_default()));
        }
        _ => return Err(ApiError::new(StatusCode::CONFLICT, "the job has not finished: wait for state `done`")),
    }
    if !jobs::is_output_name(&name) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("`{name}` is not one of this job's files")));
    }
    let path = job
        .files
        .lock()
        .ok()
        .and_then(|f| f.iter().find(|(n, _)| *n == name).map(|(_, p)| p.clone()))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("`{name}` is not one of this job's files")))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::new(StatusCode::GONE, "the job's files are gone (deleted or expired)"))?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let content_type = match path.extension().and_then(|e| e.to_str()) {
        Some("wav") => "audio/wav",
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        Some("txt") | Some("sh") | Some("apo") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let download = jobs::download_name(&job, &name, &path);
    let disposition = if name == "report" {
        format!("inline; filename=\"{download}\"")
    } else {
        format!("attachment; filename=\"{download}\"")
    };
    let stream = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 256 << 10];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(n) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if name == "report" {
        // The report is the server's own HTML: shown inside the page, scripts off.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'",
            ),
        );
    }
    Ok(resp)
}
