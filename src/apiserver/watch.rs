//! Watch streams: newline-delimited `{"type","object"}` events over a chunked 200 response.
//! Too-old resourceVersions get an in-stream ERROR 410 (never an HTTP 410, which clients treat
//! as a failed request), selector transitions become synthetic ADDED/DELETED, and bookmarks
//! never run ahead of what this stream has processed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::objects::{Objects, Stored, WatchEvent};
use super::registry::{ResourceDef, View};
use super::selectors::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use super::verbs;
use crate::store::ChangeKind;

/// How event objects are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Meta,
    Table(IncludeObject),
}

/// Everything a watch request asked for.
pub struct WatchRequest {
    pub def: Arc<ResourceDef>,
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// None: start with the current objects; Some(n): changes after n.
    pub from: Option<u64>,
    pub bookmarks: bool,
    pub send_initial: bool,
    pub timeout: Duration,
    pub bookmark_every: Duration,
    pub format: Format,
}

struct Filter {
    def: Arc<ResourceDef>,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, ns: &str, obj: &Stored) -> bool {
        self.ns.as_deref().is_none_or(|n| n == ns) && obj.matches(&self.labels, &self.fields)
    }

    /// What this watcher sees of one change, if anything: the event type it gets.
    fn translate(&self, e: &WatchEvent) -> Option<&'static str> {
        if e.key.0 != self.def.storage {
            return None;
        }
        let now = self.matches(&e.key.1, &e.obj);
        match e.kind {
            ChangeKind::Added => now.then_some("ADDED"),
            ChangeKind::Deleted => now.then_some("DELETED"),
            ChangeKind::Modified => {
                match (e.old.as_deref().map(|o| self.matches(&e.key.1, o)), now) {
                    (Some(true) | None, true) => Some("MODIFIED"),
                    (Some(false), true) => Some("ADDED"),
                    (Some(true), false) => Some("DELETED"),
                    _ => None,
                }
            }
        }
    }
}

struct Emitter {
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    def: Arc<ResourceDef>,
    format: Format,
    sent_columns: bool,
}

impl Emitter {
    async fn send_line(&mut self, typ: &str, object: Value) -> bool {
        let mut line = json!({"type": typ, "object": object}).to_string();
        line.push('\n');
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    /// Sends one object. JSON watchers send its stored text as it is: a hundred watchers
    /// share one serialization, made when it was written.
    async fn event(&mut self, typ: &'static str, stored: &Stored) -> bool {
        let mut line = Vec::with_capacity(stored.json().len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(typ.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        if self.format == Format::Json && self.def.view == View::Plain {
            line.extend_from_slice(stored.json());
        } else {
            let value = stored.value();
            let view = verbs::view(&self.def, &value);
            // Writing into a Vec cannot fail.
            let _ = match self.format {
                Format::Json => serde_json::to_writer(&mut line, &*view),
                Format::Meta => serde_json::to_writer(&mut line, &table::partial_metadata(&view)),
                Format::Table(include) => {
                    let rv = view
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let t = table::table(&self.def, &[&view], include, &rv, !self.sent_columns);
                    self.sent_columns = true;
                    serde_json::to_writer(&mut line, &t)
                }
            };
        }
        line.extend_from_slice(b"}\n");
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn bookmark(&mut self, rv: u64, initial_end: bool) -> bool {
        let (kind, av) = match self.format {
            Format::Json => (self.def.kind.clone(), self.def.api_version()),
            Format::Meta => (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
            Format::Table(_) => ("Table".to_string(), "meta.k8s.io/v1".to_string()),
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send_line(
            "BOOKMARK",
            json!({"kind": kind, "apiVersion": av, "metadata": meta}),
        )
        .await
    }

    async fn expired(&mut self, message: String) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "Expired", "code": 410});
        self.send_line("ERROR", status).await;
    }
}

/// Starts a watch and returns the streaming response.
pub fn start(objects: Arc<Objects>, req: WatchRequest) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    tokio::spawn(run(objects, req, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn run(
    objects: Arc<Objects>,
    req: WatchRequest,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let filter = Filter {
        def: req.def.clone(),
        ns: req.ns.clone(),
        labels: req.labels,
        fields: req.fields,
    };
    let mut out = Emitter {
        tx,
        def: req.def.clone(),
        format: req.format,
        sent_columns: false,
    };
    let from = if req.send_initial { None } else { req.from };
    let start = match objects.subscribe(&req.def.storage, req.ns.as_deref(), from) {
        Ok(s) => s,
        Err((asked, oldest)) => {
            out.expired(format!("too old resource version: {asked} ({oldest})"))
                .await;
            return;
        }
    };
    let mut rx = start.rx;
    let mut last_rv = start.rv;
    for (ns, obj) in &start.snapshot {
        if filter.matches(ns, obj) && !out.event("ADDED", obj).await {
            return;
        }
    }
    for e in &start.backlog {
        if let Some(typ) = filter.translate(e)
            && !out.event(typ, &e.obj).await
        {
            return;
        }
    }
    if req.send_initial && !out.bookmark(start.rv, true).await {
        return;
    }
    let deadline = tokio::time::sleep(req.timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(req.bookmark_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Ok(batch) => {
                    for e in batch.iter().filter(|e| e.rv > start.rv) {
                        if let Some(typ) = filter.translate(e)
                            && !out.event(typ, &e.obj).await
                        {
                            return;
                        }
                        last_rv = last_rv.max(e.rv);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    out.expired(format!("too old resource version: {last_rv} (the watcher fell behind)")).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if req.bookmarks => {
                if !out.bookmark(last_rv, false).await {
                    return;
                }
            }
            _ = &mut deadline => {
                if req.bookmarks {
                    out.bookmark(last_rv, false).await;
                }
                return;
            }
            _ = out.tx.closed() => return,
        }
    }
}
