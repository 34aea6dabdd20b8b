//! The HTTP side: connections, fault handling, and each verb on each resource.
//!
//! It is one piece because every verb goes through the same request parsing, fault injection,
//! admission, store and response path, and reading one verb needs the others' shared steps.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use super::admission::{self, event_from_core, event_to_core};
use super::error::ApiError;
use super::faults::{Decision, Faults};
use super::openapi;
use super::patch;
use super::rbac;
use super::registry::{self, ResourceType};
use super::request::{self, ApiRequest, PatchType, ResourcePath, Route, Verb};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{
    self, Broadcast, DeleteOptions, EventType, ObjKey, Outcome, StorageKey, Store, StoreConfig, Stored, Written,
};
use super::table;

pub type Body = BoxBody<Bytes, Infallible>;

/// Settings of one API server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// 0 picks a free port.
    pub port: u16,
    pub store: StoreConfig,
    /// How often watchers that asked for bookmarks get one.
    pub bookmark_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { port: 0, store: StoreConfig::default(), bookmark_interval: Duration::from_secs(1) }
    }
}

/// Everything the request handlers share.
#[derive(Debug)]
pub struct ServerState {
    pub store: Store,
    pub faults: Faults,
    types: RwLock<Vec<Arc<ResourceType>>>,
    addr: SocketAddr,
    eviction: tokio::sync::Mutex<()>,
    /// Issued ServiceAccount tokens and what RBAC allowed and refused them.
    pub rbac: rbac::Ledger,
}

/// The connection refused by a partition: hyper closes the connection on it.
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection refused by an injected partition")
    }
}

impl std::error::Error for Refused {}

/// A running server; dropping it stops the server and closes every connection.
#[derive(Debug)]
pub struct RunningServer {
    pub state: Arc<ServerState>,
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn shutdown(&mut self) {
        self.tasks.abort_all();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Binds 127.0.0.1 and serves until dropped.
pub async fn start(config: ServerConfig) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind(("127.0.0.1", config.port)).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(ServerState {
        store: Store::new(config.store.clone()),
        faults: Faults::default(),
        types: RwLock::new(registry::builtins().into_iter().map(Arc::new).collect()),
        addr,
        eviction: tokio::sync::Mutex::new(()),
        rbac: rbac::Ledger::default(),
    });
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        if let Some(rt) = state.lookup("", "v1", "namespaces") {
            let object = admission::prepare_create(&rt, object, None).map_err(std::io::Error::other)?;
            state.store.create(&rt.storage_key(), false, object, "namespaces", "").map_err(std::io::Error::other)?;
        }
    }
    // The priority classes kube-apiserver creates at start-up.
    for (name, value) in [("system-cluster-critical", 2_000_000_000), ("system-node-critical", 2_000_001_000)] {
        let object = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
            "value": value, "description": "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."});
        if let Some(rt) = state.lookup("scheduling.k8s.io", "v1", "priorityclasses") {
            let object = admission::prepare_create(&rt, object, None).map_err(std::io::Error::other)?;
            state
                .store
                .create(&rt.storage_key(), false, object, "priorityclasses", "")
                .map_err(std::io::Error::other)?;
        }
    }
    let mut tasks = JoinSet::new();
    let accept_state = state.clone();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let state = accept_state.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
            while connections.try_join_next().is_some() {}
        }
    });
    let bookmark_state = state.clone();
    let interval = config.bookmark_interval;
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            bookmark_state.store.bookmark();
        }
    });
    Ok(RunningServer { state, addr, tasks })
}

fn respond(code: u16, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Adds kube-apiserver's `Warning: 299 - "…"` header for each warning.
fn warn(mut response: Response<Body>, warnings: &[String]) -> Response<Body> {
    for warning in warnings {
        let text = format!("299 - {}", serde_json::Value::String(warning.clone()));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn respond_json(code: u16, value: &Value) -> Response<Body> {
    respond(code, Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
}

fn respond_error(error: &ApiError) -> Response<Body> {
    let mut response = respond_json(error.code, &error.status());
    if let Some(seconds) = error.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn header_text(req: &Request<Incoming>, name: header::HeaderName) -> &str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

async fn handle(state: Arc<ServerState>, req: Request<Incoming>) -> Result<Response<Body>, Refused> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let content_type = header_text(&req, header::CONTENT_TYPE).to_string();
    let accept = header_text(&req, header::ACCEPT).to_string();
    let user_agent = header_text(&req, header::USER_AGENT).to_string();
    let token = header_text(&req, header::AUTHORIZATION).trim_start_matches("Bearer ").to_string();
    // Faults are decided before the request is read; with none set, nothing here runs.
    let admin = path.starts_with("/_sim");
    if !admin && state.faults.active() {
        let resource = request::parse_route(&path)
            .ok()
            .and_then(|r| match r {
                Route::Resource(p) => Some(p.plural),
                _ => None,
            })
            .unwrap_or_default();
        let verb = guess_verb(&method, &query);
        loop {
            let (latency, decision) = state.faults.decide(verb, &resource, &user_agent, &token);
            match decision {
                Decision::Hang => state.faults.changed().await,
                Decision::Refuse => return Err(Refused),
                Decision::Fail(error) => {
                    tokio::time::sleep(latency).await;
                    return Ok(respond_error(&error));
                }
                Decision::Proceed => {
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    break;
                }
            }
        }
        state.faults.wait_unpaused().await;
    }
    let body = match Limited::new(req.into_body(), request::MAX_BODY + 1).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(respond_error(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            )));
        }
    };
    let decoded = match request::decode(&method, &path, query.as_deref(), &content_type, &accept, &body) {
        Ok(decoded) => decoded,
        Err(error) => return Ok(respond_error(&error)),
    };
    if let Err(error) = check_access(&state, &token, &decoded, &path) {
        return Ok(respond_error(&error));
    }
    let manager_default = user_agent.split('/').next().unwrap_or("unknown").to_string();
    Ok(match serve(&state, decoded, &manager_default).await {
        Ok(response) => response,
        Err(error) => respond_error(&error),
    })
}

/// Authenticates the caller and, for a ServiceAccount token, authorizes the request by RBAC.
fn check_access(state: &ServerState, token: &str, req: &ApiRequest, path: &str) -> Result<(), ApiError> {
    let unauthorized = || ApiError::new(401, "Unauthorized", "Unauthorized");
    let account = match state.rbac.account(token) {
        None => return Ok(()),
        Some(Err(())) => return Err(unauthorized()),
        Some(Ok(account)) => account,
    };
    // A token outlives nothing: once its ServiceAccount is deleted, it no longer authenticates.
    let sa_key = (String::new(), "serviceaccounts".to_string());
    if state.store.get(&sa_key, &(account.namespace.clone(), account.name.clone())).is_none() {
        return Err(unauthorized());
    }
    let p = match &req.route {
        Route::Resource(p) => p,
        // The simulator's own fault and inspection endpoint is test infrastructure, not Kubernetes.
        Route::Admin(_) => return Ok(()),
        _ if rbac::discovery_allowed(path) => return Ok(()),
        _ => {
            let message =
                format!("forbidden: User \"{}\" cannot {} path \"{path}\"", account.user(), req.verb.as_str());
            state.rbac.refused(message.clone());
            return Err(ApiError::new(403, "Forbidden", message));
        }
    };
    let attrs = rbac::Attributes {
        verb: req.verb.as_str(),
        group: &p.group,
        resource: &p.plural,
        subresource: p.subresource.as_deref(),
        name: p.name.as_deref(),
        namespace: p.namespace.as_deref(),
    };
    let objects = |plural: &str, namespace: Option<&str>| -> Vec<Value> {
        let (objects, _) = state.store.snapshot(&("rbac.authorization.k8s.io".to_string(), plural.to_string()));
        objects.iter().filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns)).map(|(_, o)| o.value.clone()).collect()
    };
    let (cluster_roles, cluster_role_bindings) = (objects("clusterroles", None), objects("clusterrolebindings", None));
    let namespace = p.namespace.as_deref().unwrap_or("\u{0}");
    let (roles, role_bindings) = (objects("roles", Some(namespace)), objects("rolebindings", Some(namespace)));
    let policy = rbac::Policy {
        cluster_roles: &cluster_roles,
        cluster_role_bindings: &cluster_role_bindings,
        roles: &roles,
        role_bindings: &role_bindings,
    };
    match rbac::authorize(&policy, &account, &attrs) {
        Some(rule) => {
            state.rbac.allowed(rule, &attrs);
            Ok(())
        }
        None => {
            let plural = if p.group.is_empty() { p.plural.clone() } else { format!("{}.{}", p.plural, p.group) };
            let message = rbac::forbidden_message(&account, &attrs, &plural);
            state.rbac.refused(message.clone());
            Err(ApiError::new(403, "Forbidden", message)
                .with_details(json!({"name": p.name.clone().unwrap_or_default(), "group": p.group, "kind": p.plural})))
        }
    }
}

/// TokenRequest (`POST …/serviceaccounts/{name}/token`): a token that authenticates as the account.
fn token_request(
    state: &ServerState,
    key: &StorageKey,
    objkey: &ObjKey,
    body: &Value,
) -> Result<Response<Body>, ApiError> {
    if state.store.get(key, objkey).is_none() {
        return Err(ApiError::not_found("serviceaccounts", "", &objkey.1));
    }
    let token = state.rbac.issue(rbac::Account { namespace: objkey.0.clone(), name: objkey.1.clone() });
    let seconds = body.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
    let expires = store::time_in(seconds);
    Ok(respond_json(
        201,
        &json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": objkey.1, "namespace": objkey.0},
            "spec": body.get("spec").cloned().unwrap_or_else(|| json!({})),
            "status": {"token": token, "expirationTimestamp": expires}
        }),
    ))
}

fn guess_verb(method: &str, query: &Option<String>) -> &'static str {
    match method {
        "GET" if query.as_deref().is_some_and(|q| q.contains("watch=1") || q.contains("watch=true")) => "watch",
        "GET" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "other",
    }
}

impl ServerState {
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    fn types(&self) -> Vec<Arc<ResourceType>> {
        self.types.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn storage_type(&self, rt: &ResourceType) -> Arc<ResourceType> {
        match &rt.storage {
            Some((group, plural)) => {
                self.types().into_iter().find(|t| &t.group == group && &t.plural == plural && t.storage.is_none())
            }
            None => None,
        }
        .unwrap_or_else(|| Arc::new(rt.clone()))
    }

    /// Serves (or stops serving) the kinds of a CRD as it now stands.
    fn sync_crd(&self, name: &str, crd: Option<&Value>) -> Result<(), ApiError> {
        let fresh = match crd {
            Some(crd) => registry::from_crd(crd).map_err(|e| {
                ApiError::invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, vec![split_cause(&e)])
            })?,
            None => Vec::new(),
        };
        let mut types = self.types.write().unwrap_or_else(|p| p.into_inner());
        for t in &fresh {
            if types.iter().any(|x| x.group == t.group && x.plural == t.plural && x.crd.as_deref() != Some(name)) {
                return Err(ApiError::invalid(
                    "CustomResourceDefinition",
                    "apiextensions.k8s.io",
                    name,
                    vec![("spec.names.plural".into(), format!("Invalid value: {:?}: is already in use", t.plural))],
                ));
            }
        }
        types.retain(|t| t.crd.as_deref() != Some(name));
        types.extend(fresh.into_iter().map(Arc::new));
        Ok(())
    }
}

fn split_cause(message: &str) -> (String, String) {
    match message.split_once(": ") {
        Some((field, why)) => (field.to_string(), why.to_string()),
        None => ("spec".to_string(), message.to_string()),
    }
}

async fn serve(state: &Arc<ServerState>, req: ApiRequest, manager_default: &str) -> Result<Response<Body>, ApiError> {
    match &req.route {
        Route::CoreVersions => Ok(respond_json(
            200,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.addr.to_string()}]
            }),
        )),
        Route::Groups => Ok(respond_json(200, &group_list(&state.types()))),
        Route::Group(group) => {
            let list = group_list(&state.types());
            let found = list["groups"].as_array().and_then(|g| g.iter().find(|g| g["name"] == json!(group)).cloned());
            let mut found = found.ok_or_else(ApiError::path_not_found)?;
            found["kind"] = json!("APIGroup");
            found["apiVersion"] = json!("v1");
            Ok(respond_json(200, &found))
        }
        Route::Resources { group, version } => {
            let types: Vec<Arc<ResourceType>> =
                state.types().into_iter().filter(|t| &t.group == group && &t.version == version).collect();
            if types.is_empty() {
                return Err(ApiError::path_not_found());
            }
            Ok(respond_json(200, &resource_list(group, version, &types)))
        }
        Route::Version => Ok(respond_json(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0+rafter-sim", "gitCommit": "rafter-sim",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0",
                "compiler": "gc", "platform": "linux/amd64"
            }),
        )),
        Route::Healthz => Ok(respond(200, Bytes::from_static(b"ok"))),
        // kubectl's client-side validation downloads the v2 document; an empty one (no definitions)
        // leaves validation to the server, which checks every write anyway. v3 describes the kinds
        // (`kubectl explain`) and declares `fieldValidation`, so kubectl validates on the server.
        Route::OpenApi if req.verb == Verb::List && openapi_v2(&req) => {
            if req.protobuf {
                // gnostic's openapi_v2.Document with only `swagger: "2.0"` (field 1, a string).
                let mut response = respond(200, Bytes::from_static(b"\x0a\x032.0"));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
                );
                return Ok(response);
            }
            Ok(respond_json(
                200,
                &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}}),
            ))
        }
        Route::OpenApi if req.verb == Verb::List && req.openapi_version.as_deref() == Some("v3") => {
            Ok(respond_json(200, &openapi::root(&state.types())))
        }
        Route::OpenApi if req.verb == Verb::List => {
            let gv = req.openapi_version.as_deref().and_then(|p| p.strip_prefix("v3/")).unwrap_or_default();
            let doc = openapi::group_version(&state.types(), gv).ok_or_else(ApiError::path_not_found)?;
            Ok(respond_json(200, &doc))
        }
        Route::OpenApi => Err(ApiError::path_not_found()),
        Route::Admin(path) => admin(state, path, req.verb, req.body.as_ref()),
        Route::Resource(path) => {
            let path = path.clone();
            let view = state.lookup(&path.group, &path.version, &path.plural).ok_or_else(ApiError::path_not_found)?;
            resource(state, &view, &path, req, manager_default).await
        }
    }
}

fn openapi_v2(req: &ApiRequest) -> bool {
    req.openapi_version.as_deref() == Some("v2")
}

/// `/_sim/…`, by method: `GET` reads, `POST` acts (a body is only needed to set faults).
fn admin(state: &Arc<ServerState>, path: &str, verb: Verb, body: Option<&Value>) -> Result<Response<Body>, ApiError> {
    let read = matches!(verb, Verb::Get | Verb::List);
    match (path, read) {
        ("faults", true) => Ok(respond_json(200, &serde_json::to_value(state.faults.spec()).unwrap_or_default())),
        ("faults", false) => {
            let body = body.ok_or_else(|| {
                ApiError::bad_request(
                    "fault spec: POST a JSON body such as {\"latencyMs\": 200}; {} clears every fault",
                )
            })?;
            let spec =
                serde_json::from_value(body.clone()).map_err(|e| ApiError::bad_request(format!("fault spec: {e}")))?;
            state.faults.set(spec);
            Ok(respond_json(200, &serde_json::to_value(state.faults.spec()).unwrap_or_default()))
        }
        ("drop-watches", false) => {
            state.faults.drop_watches();
            Ok(respond_json(200, &json!({"dropped": true})))
        }
        ("pause", false) => {
            state.faults.pause();
            Ok(respond_json(200, &json!({"paused": true})))
        }
        ("resume", false) => {
            state.faults.resume();
            Ok(respond_json(200, &json!({"paused": false})))
        }
        ("rbac", true) => Ok(respond_json(200, &state.rbac.report())),
        ("stats", true) => Ok(respond_json(
            200,
            &json!({
                "resourceVersion": state.store.current_rv(),
                "objects": state.store.object_count(),
                "watchers": state.store.watcher_count(),
            }),
        )),
        _ => Err(ApiError::path_not_found()),
    }
}

fn version_priority(version: &str) -> (u8, i64, i64) {
    let rest = version.trim_start_matches('v');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, n.parse().unwrap_or(0))
    } else {
        (0, major, 0)
    }
}

fn group_list(types: &[Arc<ResourceType>]) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        let versions = groups.entry(&t.group).or_default();
        if versions.is_empty() {
            order.push(&t.group);
        }
        if !versions.contains(&t.version.as_str()) {
            versions.push(&t.version);
        }
    }
    let groups: Vec<Value> = order
        .iter()
        .map(|g| {
            let mut versions = groups.get(g).cloned().unwrap_or_default();
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
            let entries: Vec<Value> =
                versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": entries, "preferredVersion": entries.first().cloned().unwrap_or_default()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str, types: &[Arc<ResourceType>]) -> Value {
    let mut resources = Vec::new();
    for t in types {
        let mut entry = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind, "verbs": t.verbs(),
        });
        if !t.short_names.is_empty() {
            entry["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            entry["categories"] = json!(t.categories);
        }
        resources.push(entry);
        if t.status_subresource {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if t.group.is_empty() && t.plural == "pods" {
            resources.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
            resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// Renders a stored object as the requested kind and version sees it.
fn render(view: &ResourceType, stored: &Stored) -> Bytes {
    if view.storage.is_some() {
        return Bytes::from(serde_json::to_vec(&event_from_core(&stored.value)).unwrap_or_default());
    }
    if stored.value.get("apiVersion").and_then(Value::as_str) != Some(view.api_version().as_str()) {
        let mut value = stored.value.clone();
        value["apiVersion"] = json!(view.api_version());
        return Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    }
    stored.bytes.clone()
}

fn render_value(view: &ResourceType, stored: &Stored) -> Value {
    if view.storage.is_some() {
        return event_from_core(&stored.value);
    }
    let mut value = stored.value.clone();
    value["apiVersion"] = json!(view.api_version());
    value
}

/// Filters for list and watch.
struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(view: &ResourceType, namespace: Option<&str>, query: &request::Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(query.label_selector.as_deref().unwrap_or_default())?;
        let mut text = query.field_selector.clone().unwrap_or_default();
        if view.storage.is_some() {
            text = text.replace("regarding.", "involvedObject.").replace("reportingController", "reportingComponent");
        }
        let fields = FieldSelector::parse(
            &text,
            |f| {
                view.selectable(f)
                    || (view.storage.is_some() && f.starts_with("involvedObject."))
                    || f == "reportingComponent"
            },
            &view.kind,
        )?;
        Ok(Self { namespace: namespace.map(str::to_string), labels, fields })
    }

    fn is_trivial(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, stored: &Stored) -> bool {
        if let Some(ns) = &self.namespace
            && stored.meta("namespace") != ns
        {
            return false;
        }
        self.labels.matches(stored.labels()) && (self.fields.is_empty() || self.fields.matches(&stored.value))
    }
}

fn objkey(rt: &ResourceType, path: &ResourcePath) -> ObjKey {
    let ns = if rt.namespaced { path.namespace.clone().unwrap_or_default() } else { String::new() };
    (ns, path.name.clone().unwrap_or_default())
}

async fn resource(
    state: &Arc<ServerState>,
    view: &Arc<ResourceType>,
    path: &ResourcePath,
    req: ApiRequest,
    manager_default: &str,
) -> Result<Response<Body>, ApiError> {
    let rt = state.storage_type(view);
    let key: StorageKey = rt.storage_key();
    if !rt.namespaced && path.namespace.is_some() {
        return Err(ApiError::path_not_found());
    }
    if rt.namespaced && path.name.is_some() && path.namespace.is_none() {
        return Err(ApiError::path_not_found());
    }
    if let Some(name) = &path.name {
        admission::check_path_name(name)?;
    }
    let sub = path.subresource.as_deref();
    match sub {
        None => {}
        Some("status") if rt.status_subresource => {}
        Some("binding" | "eviction") if rt.group.is_empty() && rt.plural == "pods" && req.verb == Verb::Create => {}
        Some("token") if rt.group.is_empty() && rt.plural == "serviceaccounts" && req.verb == Verb::Create => {}
        Some("scale") if rt.group == "apps" && (rt.plural == "deployments" || rt.plural == "replicasets") => {
            return scale(state, &rt, &key, path, &req);
        }
        Some(_) => return Err(ApiError::path_not_found()),
    }
    let not_found = || ApiError::not_found(&rt.plural, &rt.group, path.name.as_deref().unwrap_or_default());
    let objkey = objkey(&rt, path);
    let manager = req.query.field_manager.clone().unwrap_or_else(|| manager_default.to_string());
    match req.verb {
        Verb::Get => {
            let stored = state.store.get(&key, &objkey).ok_or_else(not_found)?;
            if req.table {
                return Ok(respond_json(
                    200,
                    &table::table(view, &[render_value(view, &stored)], &stored.rv.to_string()),
                ));
            }
            Ok(respond(200, render(view, &stored)))
        }
        Verb::List => list(state, view, &key, path, &req),
        Verb::Watch => watch(state, view.clone(), &key, path, &req),
        Verb::Create => {
            let body = req.body.clone().unwrap_or_default();
            match sub {
                Some("binding") => return bind(state, &rt, &key, &objkey, &body),
                Some("eviction") => return evict(state, &rt, &key, &objkey, &body).await,
                Some("token") => return token_request(state, &key, &objkey, &body),
                _ => {}
            }
            let body = if view.storage.is_some() { event_to_core(&body) } else { body };
            let fields = req.query.field_validation;
            let (object, warnings) = admission::prepare_create_with(&rt, body, path.namespace.as_deref(), fields)?;
            let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            let is_crd = rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions";
            if is_crd {
                registry::from_crd(&object).map_err(|e| {
                    ApiError::invalid("CustomResourceDefinition", &rt.group, &name, vec![split_cause(&e)])
                })?;
            }
            if req.query.dry_run {
                return Ok(warn(respond_json(201, &object), &warnings));
            }
            let stored = state.store.create(&key, rt.namespaced, object, &rt.plural, &rt.group)?;
            if is_crd && let Err(e) = state.sync_crd(&name, Some(&stored.value)) {
                let _ = state.store.delete(&key, &(String::new(), name.clone()), &DeleteOptions::default(), not_found);
                return Err(e);
            }
            Ok(warn(respond(201, render(view, &stored)), &warnings))
        }
        Verb::Update => {
            let body = req.body.clone().unwrap_or_default();
            let body = if view.storage.is_some() { event_to_core(&body) } else { body };
            let mut warnings = Vec::new();
            let written = state.store.modify(&key, &objkey, not_found, |current| {
                let fields = req.query.field_validation;
                let (mut next, found) = admission::prepare_update_with(&rt, &current.value, body, sub, fields)?;
                warnings = found;
                patch::record_update(&rt, &current.value, &mut next, &manager, &store::now(), sub.unwrap_or_default());
                Ok(if req.query.dry_run { Outcome::Keep } else { Outcome::Replace(next) })
            })?;
            after_write(state, &rt, &written)?;
            Ok(warn(respond(200, render(view, written.object())), &warnings))
        }
        Verb::Patch => {
            let body = req.body.clone().unwrap_or_default();
            let kind = req.patch.unwrap_or(PatchType::Merge);
            if kind == PatchType::Apply && req.query.field_manager.as_deref().is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    vec![("fieldManager".into(), "Required value: is required for apply patch".into())],
                ));
            }
            if kind == PatchType::Strategic && rt.schema.is_some() {
                return Err(ApiError::unsupported_media_type(
                    "application/strategic-merge-patch+json (not supported for custom resources)",
                ));
            }
            let exists = state.store.get(&key, &objkey).is_some();
            let mut warnings = Vec::new();
            if kind == PatchType::Apply && !exists && sub.is_none() {
                let applied = patch::apply(&rt, None, &body, &manager, req.query.force, &store::now(), "")
                    .map_err(|c| ApiError::conflict(&rt.plural, &rt.group, &objkey.1, &c.message()))?;
                let mut applied = applied;
                if let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("name".into(), json!(objkey.1));
                }
                let fields = req.query.field_validation;
                let (object, found) = admission::prepare_create_with(&rt, applied, path.namespace.as_deref(), fields)?;
                warnings = found;
                match state.store.create(&key, rt.namespaced, object, &rt.plural, &rt.group) {
                    Ok(stored) => {
                        if rt.plural == "customresourcedefinitions" {
                            state.sync_crd(&objkey.1, Some(&stored.value))?;
                        }
                        return Ok(warn(respond(201, render(view, &stored)), &warnings));
                    }
                    Err(e) if e.reason == "AlreadyExists" => {}
                    Err(e) => return Err(e),
                }
            }
            let written = state.store.modify(&key, &objkey, not_found, |current| {
                let now = store::now();
                let mut next = current.value.clone();
                let name = objkey.1.as_str();
                match kind {
                    PatchType::Merge => patch::merge_patch(&mut next, &body),
                    PatchType::Json => patch::json_patch(&mut next, &body)
                        .map_err(|e| ApiError::invalid(&rt.kind, &rt.group, name, vec![("patch".into(), e)]))?,
                    PatchType::Strategic => patch::strategic_merge(&rt, &mut next, &body)
                        .map_err(|e| ApiError::invalid(&rt.kind, &rt.group, name, vec![("patch".into(), e)]))?,
                    PatchType::Apply => {
                        next = patch::apply(
                            &rt,
                            Some(&current.value),
                            &body,
                            &manager,
                            req.query.force,
                            &now,
                            sub.unwrap_or_default(),
                        )
                        .map_err(|c| ApiError::conflict(&rt.plural, &rt.group, name, &c.message()))?;
                    }
                }
                let fields = req.query.field_validation;
                let (mut next, found) = admission::prepare_update_with(&rt, &current.value, next, sub, fields)?;
                warnings = found;
                if kind != PatchType::Apply {
                    patch::record_update(&rt, &current.value, &mut next, &manager, &now, sub.unwrap_or_default());
                }
                Ok(if req.query.dry_run { Outcome::Keep } else { Outcome::Replace(next) })
            })?;
            after_write(state, &rt, &written)?;
            Ok(warn(respond(200, render(view, written.object())), &warnings))
        }
        Verb::Delete => {
            let options = delete_options(&req);
            let written = if req.query.dry_run {
                Written::Unchanged(state.store.get(&key, &objkey).ok_or_else(not_found)?)
            } else {
                state.store.delete(&key, &objkey, &options, not_found)?
            };
            after_write(state, &rt, &written)?;
            Ok(respond(200, render(view, written.object())))
        }
        Verb::DeleteCollection => {
            let filter = Filter::new(view, path.namespace.as_deref(), &req.query)?;
            let (objects, rv) = state.store.snapshot(&key);
            let options = delete_options(&req);
            let mut items = Vec::new();
            for (k, stored) in objects.iter() {
                if !filter.matches(stored) {
                    continue;
                }
                if let Ok(written) = state.store.delete(&key, k, &options, not_found) {
                    after_write(state, &rt, &written)?;
                    items.push(render_value(view, written.object()));
                }
            }
            Ok(respond_json(
                200,
                &json!({"kind": view.list_kind(), "apiVersion": view.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            ))
        }
    }
}

/// The `autoscaling/v1` Scale of a workload.
fn scale_of(object: &Value) -> Value {
    let selector = object.pointer("/spec/selector/matchLabels").and_then(Value::as_object).map(|labels| {
        labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
    });
    let meta = object.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"], "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector.unwrap_or_default()}
    })
}

/// `…/scale`: read or change a workload's replicas (what `kubectl scale` uses).
fn scale(
    state: &Arc<ServerState>,
    rt: &ResourceType,
    key: &StorageKey,
    path: &ResourcePath,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let objkey = objkey(rt, path);
    let not_found = || ApiError::not_found(&rt.plural, &rt.group, &objkey.1);
    if req.verb == Verb::Get {
        let stored = state.store.get(key, &objkey).ok_or_else(not_found)?;
        return Ok(respond_json(200, &scale_of(&stored.value)));
    }
    if !matches!(req.verb, Verb::Patch | Verb::Update) {
        return Err(ApiError::method_not_allowed("scale supports get, update and patch"));
    }
    let body = req.body.clone().unwrap_or_default();
    let written = state.store.modify(key, &objkey, not_found, |current| {
        let mut scaled = scale_of(&current.value);
        match (req.verb, req.patch) {
            (Verb::Update, _) => scaled = body.clone(),
            (_, Some(PatchType::Json)) => patch::json_patch(&mut scaled, &body)
                .map_err(|e| ApiError::invalid("Scale", "autoscaling", &objkey.1, vec![("patch".into(), e)]))?,
            _ => patch::merge_patch(&mut scaled, &body),
        }
        let replicas = scaled.pointer("/spec/replicas").and_then(Value::as_i64).ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                "autoscaling",
                &objkey.1,
                vec![("spec.replicas".into(), "Required value".into())],
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                &objkey.1,
                vec![(
                    "spec.replicas".into(),
                    format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let mut next = current.value.clone();
        next["spec"]["replicas"] = json!(replicas);
        let next = admission::prepare_update(rt, &current.value, next, None)?;
        Ok(Outcome::Replace(next))
    })?;
    Ok(respond_json(200, &scale_of(&written.object().value)))
}

fn delete_options(req: &ApiRequest) -> DeleteOptions {
    let body = req.body.clone().unwrap_or_default();
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| req.query.propagation_policy.clone());
    DeleteOptions {
        grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64).or(req.query.grace_period_seconds),
        orphan: policy.as_deref() == Some("Orphan")
            || body.get("orphanDependents").and_then(Value::as_bool) == Some(true),
        uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
        resource_version: body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string),
    }
}

/// Keeps the served kinds in step with CRD writes.
fn after_write(state: &Arc<ServerState>, rt: &ResourceType, written: &Written) -> Result<(), ApiError> {
    if rt.group != "apiextensions.k8s.io" || rt.plural != "customresourcedefinitions" {
        return Ok(());
    }
    let stored = written.object();
    let name = stored.meta("name").to_string();
    match written {
        Written::Deleted(_) => {
            let kinds: Vec<Arc<ResourceType>> =
                state.types().into_iter().filter(|t| t.crd.as_deref() == Some(name.as_str())).collect();
            state.sync_crd(&name, None)?;
            if let Some(t) = kinds.first() {
                let key = t.storage_key();
                let (objects, _) = state.store.snapshot(&key);
                for (k, _) in objects.iter() {
                    let options = DeleteOptions { grace_period: Some(0), ..DeleteOptions::default() };
                    let _ = state.store.modify(&key, k, ApiError::path_not_found, |o| {
                        let mut v = o.value.clone();
                        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.remove("finalizers");
                        }
                        Ok(Outcome::Replace(v))
                    });
                    let _ = state.store.delete(&key, k, &options, ApiError::path_not_found);
                }
            }
            Ok(())
        }
        Written::Updated(_) => state.sync_crd(&name, Some(&stored.value)),
        Written::Unchanged(_) => Ok(()),
    }
}

fn success(message: &str) -> Response<Body> {
    respond_json(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "message": message, "code": 201}),
    )
}

fn bind(
    state: &Arc<ServerState>,
    rt: &ResourceType,
    key: &StorageKey,
    objkey: &ObjKey,
    body: &Value,
) -> Result<Response<Body>, ApiError> {
    let node = body.pointer("/target/name").and_then(Value::as_str).unwrap_or_default().to_string();
    if node.is_empty() {
        return Err(ApiError::invalid("Binding", "", &objkey.1, vec![("target.name".into(), "Required value".into())]));
    }
    let name = objkey.1.clone();
    state.store.modify(key, objkey, || ApiError::not_found(&rt.plural, "", &name), |pod| {
        let current = pod.value.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
        if !current.is_empty() {
            return Err(ApiError::conflict("pods", "", &name, &format!("pod {name} is already assigned to node \"{current}\"")));
        }
        if pod.value.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict("pods", "", &name, &format!("pod {name} is being deleted, cannot be assigned to a host")));
        }
        let mut next = pod.value.clone();
        next["spec"]["nodeName"] = json!(node);
        let conditions = next["status"].as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(conditions)) = conditions {
            conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": store::now()}));
        }
        Ok(Outcome::Replace(next))
    })?;
    Ok(success(""))
}

/// Whether a pod counts as healthy for a disruption budget.
fn healthy(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn budget_value(value: &Value, expected: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) {
            Some(pct) => {
                let x = pct * expected as f64 / 100.0;
                if round_up { x.ceil() as i64 } else { x.floor() as i64 }
            }
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

async fn evict(
    state: &Arc<ServerState>,
    rt: &ResourceType,
    key: &StorageKey,
    objkey: &ObjKey,
    body: &Value,
) -> Result<Response<Body>, ApiError> {
    let _serial = state.eviction.lock().await;
    let name = objkey.1.clone();
    let pod = state.store.get(key, objkey).ok_or_else(|| ApiError::not_found(&rt.plural, "", &name))?;
    let phase = pod.value.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let pdb_key = ("policy".to_string(), "poddisruptionbudgets".to_string());
    let (pdbs, _) = state.store.snapshot(&pdb_key);
    let matching: Vec<Arc<Stored>> = pdbs
        .iter()
        .filter(|(k, _)| k.0 == objkey.0)
        .map(|(_, v)| v.clone())
        .filter(|pdb| {
            let selector = pdb.value.pointer("/spec/selector").cloned().unwrap_or_default();
            selector.is_object() && LabelSelector::from_object(&selector).matches(pod.labels())
        })
        .collect();
    if matching.len() > 1 {
        return Err(ApiError::internal(
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        ));
    }
    if let (Some(pdb), false) = (matching.first(), terminal) {
        let selector = LabelSelector::from_object(pdb.value.pointer("/spec/selector").unwrap_or(&Value::Null));
        let (pods, _) = state.store.snapshot(key);
        let members: Vec<&Arc<Stored>> =
            pods.iter().filter(|(k, p)| k.0 == objkey.0 && selector.matches(p.labels())).map(|(_, p)| p).collect();
        let expected =
            members.iter().filter(|p| p.value.pointer("/metadata/deletionTimestamp").is_none()).count() as i64;
        let current = members.iter().filter(|p| healthy(&p.value)).count() as i64;
        let desired = if let Some(min) = pdb.value.pointer("/spec/minAvailable") {
            budget_value(min, expected, true)
        } else if let Some(max) = pdb.value.pointer("/spec/maxUnavailable") {
            (expected - budget_value(max, expected, true)).max(0)
        } else {
            0
        };
        let allowed = if healthy(&pod.value) { current - desired > 0 } else { current >= desired };
        if !allowed {
            let pdb_name = pdb.meta("name").to_string();
            let mut error =
                ApiError::too_many_requests("Cannot evict pod as it would violate the pod's disruption budget.");
            // kube-apiserver sends no Retry-After here: the budget, not the server's load, decides.
            error.retry_after = None;
            return Err(error.with_details(json!({
                "causes": [{"reason": "DisruptionBudget", "message": format!("The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently")}]
            })));
        }
    }
    let options = body.get("deleteOptions").cloned().unwrap_or_default();
    let options = DeleteOptions {
        grace_period: options.get("gracePeriodSeconds").and_then(Value::as_i64),
        orphan: false,
        uid: options.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
        resource_version: options.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string),
    };
    state.store.delete(key, objkey, &options, || ApiError::not_found("pods", "", &name))?;
    Ok(success(""))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: (String, String),
}

fn list(
    state: &Arc<ServerState>,
    view: &Arc<ResourceType>,
    key: &StorageKey,
    path: &ResourcePath,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::new(view, path.namespace.as_deref(), &req.query)?;
    let (objects, rv, start) = match &req.query.continue_token {
        Some(token) => {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64"))?;
            let token: ContinueToken = serde_json::from_slice(&bytes)
                .map_err(|_| ApiError::bad_request("continue key is not valid: incorrect encoded start key"))?;
            let objects = state.store.kept_snapshot(key, token.rv).ok_or_else(|| {
                ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
            })?;
            (objects, token.rv, Some(token.start))
        }
        None => {
            let (objects, rv) = state.store.snapshot(key);
            (objects, rv, None)
        }
    };
    let limit = req.query.limit.unwrap_or(usize::MAX);
    let mut items: Vec<Arc<Stored>> = Vec::new();
    let mut next = None;
    let range = match (&start, &path.namespace) {
        (Some(s), _) => objects.range((std::ops::Bound::Excluded(s.clone()), std::ops::Bound::Unbounded)),
        (None, Some(ns)) => objects.range((ns.clone(), String::new())..),
        (None, None) => objects.range::<_, ObjKey>(..),
    };
    for (k, stored) in range {
        if let Some(ns) = &path.namespace
            && &k.0 != ns
        {
            if k.0.as_str() > ns.as_str() {
                break;
            }
            continue;
        }
        if !filter.matches(stored) {
            continue;
        }
        if items.len() == limit {
            next = items.last().map(|last| (last.meta("namespace").to_string(), last.meta("name").to_string()));
            break;
        }
        items.push(stored.clone());
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(start) = next {
        state.store.keep_snapshot(key, rv, objects.clone());
        let token = serde_json::to_vec(&ContinueToken { rv, start }).unwrap_or_default();
        metadata["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
    }
    if req.table {
        let values: Vec<Value> = items.iter().map(|s| render_value(view, s)).collect();
        let mut t = table::table(view, &values, &rv.to_string());
        t["metadata"] = metadata;
        return Ok(respond_json(200, &t));
    }
    let head = json!({"kind": view.list_kind(), "apiVersion": view.api_version(), "metadata": metadata});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut body = Vec::with_capacity(head.len() + items.iter().map(|i| i.bytes.len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(&head[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&render(view, item));
    }
    body.extend_from_slice(b"]}");
    Ok(respond(200, Bytes::from(body)))
}

fn bookmark_line(view: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({"kind": view.kind, "apiVersion": view.api_version(), "metadata": metadata});
    store::watch_line("BOOKMARK", &serde_json::to_vec(&object).unwrap_or_default())
}

fn error_line(error: &ApiError) -> Bytes {
    store::watch_line("ERROR", &serde_json::to_vec(&error.status()).unwrap_or_default())
}

/// The watch line for a change as this watcher sees it, or None when it does not concern it.
fn change_line(view: &ResourceType, filter: &Filter, change: &store::Change) -> Option<Bytes> {
    let now = filter.matches(&change.object);
    let before = change.previous.as_ref().is_some_and(|p| filter.matches(p));
    let kind = match change.kind {
        EventType::Added if now => EventType::Added,
        EventType::Deleted if now => EventType::Deleted,
        EventType::Modified if now && before => EventType::Modified,
        EventType::Modified if now => EventType::Added,
        EventType::Modified if before => EventType::Deleted,
        _ => return None,
    };
    let plain = view.storage.is_none()
        && change.object.value.get("apiVersion").and_then(Value::as_str) == Some(view.api_version().as_str());
    if kind == change.kind && plain {
        return Some(change.line.clone());
    }
    Some(store::watch_line(kind.as_str(), &render(view, &change.object)))
}

fn watch(
    state: &Arc<ServerState>,
    view: Arc<ResourceType>,
    key: &StorageKey,
    path: &ResourcePath,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter::new(&view, path.namespace.as_deref(), &req.query)?;
    let filter = match (&path.name, filter) {
        (Some(name), mut f) => {
            let extra = FieldSelector::parse(&format!("metadata.name={name}"), |_| true, &view.kind)?;
            f.fields = if f.fields.is_empty() {
                extra
            } else {
                FieldSelector::parse(
                    &format!("{},metadata.name={name}", req.query.field_selector.clone().unwrap_or_default()),
                    |_| true,
                    &view.kind,
                )?
            };
            f
        }
        (None, f) => f,
    };
    let from = match req.query.resource_version.as_deref() {
        None | Some("0") => None,
        Some(rv) if req.query.send_initial_events => {
            let _ = rv;
            None
        }
        Some(rv) => {
            Some(rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?)
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    let subscription = state.store.watch(key, from);
    let state = state.clone();
    let bookmarks = req.query.allow_bookmarks;
    let initial_end = req.query.send_initial_events && bookmarks;
    let timeout = req.query.timeout_seconds.map(Duration::from_secs).unwrap_or(Duration::from_secs(1800));
    tokio::spawn(async move {
        let (replay, initial, mut events) = match subscription {
            Ok(s) => s,
            Err(error) => {
                let _ = tx.send(error_line(&error)).await;
                return;
            }
        };
        let mut drops = state.faults.watch_drops();
        drops.mark_unchanged();
        let mut last_rv = from.unwrap_or(0);
        for stored in initial.iter().filter(|s| filter.matches(s)) {
            last_rv = last_rv.max(stored.rv);
            let line = if view.storage.is_none()
                && stored.value.get("apiVersion").and_then(Value::as_str) == Some(view.api_version().as_str())
                && filter.is_trivial()
            {
                store::watch_line("ADDED", &stored.bytes)
            } else {
                store::watch_line("ADDED", &render(&view, stored))
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if initial_end {
            let rv = state.store.current_rv();
            if tx.send(bookmark_line(&view, rv, true)).await.is_err() {
                return;
            }
        }
        for event in replay {
            if let Broadcast::Change(change) = event
                && let Some(line) = change_line(&view, &filter, &change)
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = &mut deadline => return,
                _ = drops.changed() => return,
                message = events.recv() => match message {
                    Ok(Broadcast::Change(change)) => {
                        last_rv = change.rv;
                        // Send what is already queued as one chunk: one write for a burst, not one per event.
                        let mut chunk: Vec<u8> = change_line(&view, &filter, &change).map(|l| l.to_vec()).unwrap_or_default();
                        let mut lagged = false;
                        while chunk.len() < 1 << 20 {
                            match events.try_recv() {
                                Ok(Broadcast::Change(next)) => {
                                    last_rv = next.rv;
                                    if let Some(line) = change_line(&view, &filter, &next) {
                                        chunk.extend_from_slice(&line);
                                    }
                                }
                                Ok(Broadcast::Bookmark(_)) => {}
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(_) => {
                                    lagged = true;
                                    break;
                                }
                            }
                        }
                        if !chunk.is_empty() {
                            state.faults.wait_unpaused().await;
                            if tx.send(Bytes::from(chunk)).await.is_err() {
                                return;
                            }
                        }
                        if lagged {
                            return;
                        }
                    }
                    Ok(Broadcast::Bookmark(rv)) => {
                        if bookmarks && rv > last_rv {
                            last_rv = rv;
                            if tx.send(bookmark_line(&view, rv, false)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(response)
}
