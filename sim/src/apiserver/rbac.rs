//! RBAC as kube-apiserver's authorizer applies it to ServiceAccount tokens: the rules of the Roles
//! and ClusterRoles bound to the account, read from the objects the server stores, decide each
//! request; a request no rule allows is refused with 403 as kube-apiserver words it.
//!
//! Only tokens issued by the TokenRequest subresource are authorized. Every other caller is the
//! cluster's administrator (as the admin kubeconfig of a real cluster is), so the harness, the
//! simulated kubelets and the scheduler keep working unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::{Value, json};

/// Prefix of the tokens the simulator issues; a token with it that was not issued is refused (401).
pub const TOKEN_PREFIX: &str = "rafter-sim-sa.";

/// The paths every authenticated user may read (`system:discovery` and `system:public-info-viewer`
/// of kube-apiserver's bootstrap policy).
const DISCOVERY: &[&str] =
    &["/api", "/api/*", "/apis", "/apis/*", "/version", "/healthz", "/livez", "/readyz", "/openapi/*"];

/// A ServiceAccount as kube-apiserver authenticates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account {
    pub namespace: String,
    pub name: String,
}

impl Account {
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    fn groups(&self) -> [String; 3] {
        [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".to_string(),
        ]
    }
}

/// What a request asks to do, as kube-apiserver's authorizer attributes name it.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
}

/// One rule of one role: where a grant came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RuleRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub rule: usize,
}

/// The objects authorization reads, by kind.
#[derive(Debug)]
pub struct Policy<'a> {
    pub cluster_roles: &'a [Value],
    pub cluster_role_bindings: &'a [Value],
    /// Roles and RoleBindings of the request's namespace only.
    pub roles: &'a [Value],
    pub role_bindings: &'a [Value],
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn names_subject(binding: &Value, account: &Account, binding_namespace: &str) -> bool {
    let groups = account.groups();
    binding.get("subjects").and_then(Value::as_array).into_iter().flatten().any(|s| {
        let name = text(s, "/name");
        match text(s, "/kind") {
            // A RoleBinding's ServiceAccount subject defaults to the binding's namespace.
            "ServiceAccount" => {
                let ns = s.get("namespace").and_then(Value::as_str).unwrap_or(binding_namespace);
                name == account.name && ns == account.namespace
            }
            "User" => name == account.user(),
            "Group" => groups.iter().any(|g| g == name),
            _ => false,
        }
    })
}

/// Whether one rule allows the request (kube-apiserver's `RuleAllows`).
pub fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let any_or = |field: &str, wanted: &str| strings(rule, field).iter().any(|v| v == "*" || v == wanted);
    if !any_or("verbs", a.verb) || !any_or("apiGroups", a.group) {
        return false;
    }
    let combined = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let resource_ok = strings(rule, "resources")
        .iter()
        .any(|r| r == "*" || *r == combined || a.subresource.is_some_and(|sub| *r == format!("*/{sub}")));
    if !resource_ok {
        return false;
    }
    let names = strings(rule, "resourceNames");
    names.is_empty() || a.name.is_some_and(|n| names.iter().any(|r| r == n))
}

fn rules_of(role: &Value) -> Vec<Value> {
    role.get("rules").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| text(o, "/metadata/name") == name)
}

/// The rule that allows `a` for `account`, or none.
pub fn authorize(policy: &Policy<'_>, account: &Account, a: &Attributes<'_>) -> Option<RuleRef> {
    let allowing = |kind: &str, namespace: &str, role: &Value| {
        let name = text(role, "/metadata/name").to_string();
        rules_of(role).iter().position(|r| rule_allows(r, a)).map(|rule| RuleRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.clone(),
            rule,
        })
    };
    for binding in policy.cluster_role_bindings {
        if text(binding, "/roleRef/kind") != "ClusterRole" || !names_subject(binding, account, "") {
            continue;
        }
        if let Some(found) =
            find(policy.cluster_roles, text(binding, "/roleRef/name")).and_then(|r| allowing("ClusterRole", "", r))
        {
            return Some(found);
        }
    }
    // A RoleBinding grants only inside its namespace: never for cluster-scoped requests.
    let namespace = a.namespace?;
    for binding in policy.role_bindings {
        if text(binding, "/metadata/namespace") != namespace || !names_subject(binding, account, namespace) {
            continue;
        }
        let role_name = text(binding, "/roleRef/name");
        let found = match text(binding, "/roleRef/kind") {
            "Role" => find(policy.roles, role_name).and_then(|r| allowing("Role", namespace, r)),
            "ClusterRole" => find(policy.cluster_roles, role_name).and_then(|r| allowing("ClusterRole", "", r)),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Whether a path outside the resource API is one every authenticated user may read.
pub fn discovery_allowed(path: &str) -> bool {
    DISCOVERY.iter().any(|p| match p.strip_suffix("/*") {
        Some(prefix) => path == prefix || path.starts_with(&format!("{prefix}/")),
        None => path == *p,
    })
}

/// kube-apiserver's wording of a refusal.
pub fn forbidden_message(account: &Account, a: &Attributes<'_>, kind_plural: &str) -> String {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let what = match a.name {
        Some(n) => format!("{kind_plural} \"{n}\""),
        None => kind_plural.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        account.user(),
        a.verb,
        a.group
    )
}

/// Issued tokens, and what authorization allowed and refused (read at `/_sim/rbac`).
#[derive(Debug, Default)]
pub struct Ledger {
    tokens: Mutex<HashMap<String, Account>>,
    /// Rule → the requests (verb and resource) it allowed.
    exercised: Mutex<BTreeMap<RuleRef, BTreeSet<String>>>,
    denied: Mutex<Vec<String>>,
    issued: Mutex<u64>,
}

impl Ledger {
    pub fn issue(&self, account: Account) -> String {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        *issued += 1;
        let token = format!("{TOKEN_PREFIX}{}.{}.{}", account.namespace, account.name, *issued);
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(token.clone(), account);
        token
    }

    /// `None` for the administrator; `Some(Err)` for a token that looks issued but was not.
    pub fn account(&self, token: &str) -> Option<Result<Account, ()>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        Some(self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned().ok_or(()))
    }

    pub fn allowed(&self, rule: RuleRef, a: &Attributes<'_>) {
        let request = match a.subresource {
            Some(sub) => format!("{} {}/{sub}", a.verb, a.resource),
            None => format!("{} {}", a.verb, a.resource),
        };
        self.exercised.lock().unwrap_or_else(|p| p.into_inner()).entry(rule).or_default().insert(request);
    }

    pub fn refused(&self, message: String) {
        let mut denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        if !denied.contains(&message) {
            denied.push(message);
        }
    }

    pub fn report(&self) -> Value {
        let exercised: Vec<Value> = self
            .exercised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, requests)| json!({"kind": r.kind, "namespace": r.namespace, "name": r.name, "rule": r.rule, "requests": requests}))
            .collect();
        json!({"exercised": exercised, "denied": *self.denied.lock().unwrap_or_else(|p| p.into_inner())})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account { namespace: "karpenter".into(), name: "rafter".into() }
    }

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: Option<&'a str>,
        ns: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes { verb, group, resource, subresource: sub, name: Some("x"), namespace: ns }
    }

    fn cluster_policy() -> (Vec<Value>, Vec<Value>) {
        let role = json!({"metadata": {"name": "rafter"}, "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["karpenter.sh"], "resources": ["nodeclaims/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["only-this"]}
        ]});
        let binding = json!({"metadata": {"name": "rafter"}, "roleRef": {"kind": "ClusterRole", "name": "rafter"},
            "subjects": [{"kind": "ServiceAccount", "name": "rafter", "namespace": "karpenter"}]});
        (vec![role], vec![binding])
    }

    #[test]
    fn a_bound_cluster_role_allows_exactly_its_verbs_resources_and_subresources() {
        let (roles, bindings) = cluster_policy();
        let policy = Policy { cluster_roles: &roles, cluster_role_bindings: &bindings, roles: &[], role_bindings: &[] };
        let ok = |a: Attributes<'_>| authorize(&policy, &account(), &a);
        assert_eq!(ok(attrs("patch", "", "nodes", None, None)).map(|r| r.rule), Some(0));
        assert_eq!(ok(attrs("patch", "karpenter.sh", "nodeclaims", Some("status"), None)).map(|r| r.rule), Some(1));
        assert!(ok(attrs("delete", "", "nodes", None, None)).is_none());
        assert!(ok(attrs("patch", "karpenter.sh", "nodeclaims", None, None)).is_none(), "status is not the object");
        assert!(ok(attrs("patch", "", "nodes", Some("status"), None)).is_none());
        assert!(ok(attrs("get", "", "configmaps", None, Some("default"))).is_none(), "resourceNames limit the rule");
        let other = Account { namespace: "default".into(), name: "rafter".into() };
        assert!(authorize(&policy, &other, &attrs("get", "", "nodes", None, None)).is_none());
    }

    #[test]
    fn a_role_binding_grants_only_in_its_namespace_and_never_cluster_wide() {
        let role = json!({"metadata": {"name": "lease", "namespace": "karpenter"}, "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]}]});
        let binding = json!({"metadata": {"name": "lease", "namespace": "karpenter"}, "roleRef": {"kind": "Role", "name": "lease"},
            "subjects": [{"kind": "ServiceAccount", "name": "rafter"}]});
        let (roles, bindings) = (vec![role], vec![binding]);
        let policy = Policy { cluster_roles: &[], cluster_role_bindings: &[], roles: &roles, role_bindings: &bindings };
        let lease = |ns| attrs("update", "coordination.k8s.io", "leases", None, ns);
        assert!(authorize(&policy, &account(), &lease(Some("karpenter"))).is_some());
        assert!(authorize(&policy, &account(), &lease(Some("default"))).is_none());
        assert!(authorize(&policy, &account(), &lease(None)).is_none());
    }

    #[test]
    fn refusals_read_as_kube_apiservers() {
        let a = attrs("patch", "karpenter.sh", "nodeclaims", Some("status"), None);
        assert_eq!(
            forbidden_message(&account(), &a, "nodeclaims.karpenter.sh"),
            "nodeclaims.karpenter.sh \"x\" is forbidden: User \"system:serviceaccount:karpenter:rafter\" cannot patch resource \"nodeclaims/status\" in API group \"karpenter.sh\" at the cluster scope"
        );
        assert!(
            discovery_allowed("/apis/karpenter.sh/v1")
                && discovery_allowed("/version")
                && !discovery_allowed("/_sim/faults")
        );
    }
}
