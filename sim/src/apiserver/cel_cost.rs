//! The static cost of a CRD's CEL rules, estimated as kube-apiserver estimates it when the CRD is written.
//!
//! kube-apiserver refuses a CRD whose rule costs exceed two limits: one rule's estimated cost times
//! the number of times its node can occur (`StaticEstimatedCostLimit`, 10,000,000), and the sum over
//! the schema (`StaticEstimatedCRDCostLimit`, 100,000,000). The estimate follows cel-go's checker
//! (`checker/cost.go`: a cost range per expression, string traversal at 0.1 per character, regex
//! length at 0.25, comprehensions priced per iteration) over the sizes kube-apiserver derives from
//! the schema (`maxLength` × 4 bytes, `maxItems`, `maxProperties`, or what fits in a 3 MiB request
//! when they are absent). A simulator that accepted what a real server refuses would let a CRD ship
//! that no cluster installs, so the simulator refuses it with the same fields and wording.
//!
//! Known approximations: functions of Kubernetes' CEL libraries (`quantity`, `url`, `isSorted`, list
//! and string extensions) are priced linearly in their receiver's size rather than by each one's own
//! formula; an expression whose type the checker would leave `dyn` is priced by the dearest overload.
//!
//! It is one piece because it is one recursive estimator over cel-go's cost rules, which only make
//! sense together; splitting it would scatter one algorithm.

use std::collections::BTreeMap;

use cel::common::ast::{CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use serde_json::Value;

/// kube-apiserver's largest estimated cost for one rule, times its cardinality.
pub const RULE_COST_LIMIT: u64 = 10_000_000;
/// kube-apiserver's largest estimated cost for all the rules of one schema.
pub const CRD_COST_LIMIT: u64 = 100_000_000;

const MAX_REQUEST_SIZE_BYTES: i64 = 3 * 1024 * 1024;
const MIN_STRING_SIZE: i64 = 2;
const MIN_BOOL_SIZE: i64 = 4;
const MIN_NUMBER_SIZE: i64 = 1;
const MIN_DURATION_SIZE_JSON: i64 = 3;
const MAX_DURATION_SIZE_JSON: i64 = 32;
const JSON_DATE_SIZE: i64 = 12;
const MIN_DATETIME_SIZE_JSON: i64 = 21;
const MAX_DATETIME_SIZE_JSON: i64 = 32;

const STRING_TRAVERSAL: f64 = 0.1;
const REGEX_LENGTH: f64 = 0.25;
const LIST_CREATE: u64 = 10;
const MAP_CREATE: u64 = 30;
const STRUCT_CREATE: u64 = 40;

/// A range of estimated cost or size, as cel-go's `CostEstimate` and `SizeEstimate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

impl Range {
    const UNKNOWN: Range = Range { min: 0, max: u64::MAX };

    fn fixed(n: u64) -> Self {
        Range { min: n, max: n }
    }

    fn add(self, o: Range) -> Range {
        Range { min: self.min.saturating_add(o.min), max: self.max.saturating_add(o.max) }
    }

    fn mul(self, o: Range) -> Range {
        Range { min: self.min.saturating_mul(o.min), max: self.max.saturating_mul(o.max) }
    }

    fn factor(self, f: f64) -> Range {
        Range { min: by_factor(self.min, f), max: by_factor(self.max, f) }
    }

    fn union(self, o: Range) -> Range {
        Range { min: self.min.min(o.min), max: self.max.max(o.max) }
    }
}

fn by_factor(x: u64, f: f64) -> u64 {
    let xf = x as f64;
    if xf > 0.0 && f > 0.0 && xf > (u64::MAX as f64) / f {
        return u64::MAX;
    }
    let ceil = (xf * f).ceil();
    if ceil >= 18_446_744_073_709_551_616.0 { u64::MAX } else { ceil as u64 }
}

/// The CEL declaration kube-apiserver derives from a schema node: its shape, the most elements it
/// can hold (characters, items, entries) and the fewest bytes it takes in JSON.
#[derive(Clone, Debug)]
pub struct Decl {
    shape: Shape,
    max_elements: u64,
    min_size: i64,
}

#[derive(Clone, Debug)]
enum Shape {
    Bool,
    Int,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    Dyn,
    List(Box<Decl>),
    Map(Box<Decl>, Box<Decl>),
    Object(BTreeMap<String, Decl>),
}

fn simple(shape: Shape, min_size: i64, max_elements: i64) -> Decl {
    Decl { shape, max_elements: max_elements.max(0) as u64, min_size }
}

fn int_of(schema: &Value, key: &str) -> Option<i64> {
    schema.get(key).and_then(Value::as_i64)
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

impl Decl {
    /// The declaration of `schema`; `resource_root` for the root of a resource or an embedded one,
    /// where `apiVersion`, `kind` and `metadata.name`/`generateName` are always readable.
    pub fn from_schema(schema: &Value, resource_root: bool) -> Option<Decl> {
        if flag(schema, "x-kubernetes-int-or-string") {
            let max = match int_of(schema, "maxLength") {
                Some(n) => n.max(0) * 4,
                None => MAX_REQUEST_SIZE_BYTES - 2,
            };
            return Some(simple(Shape::Dyn, 1, max));
        }
        let owned;
        let schema = if resource_root && !has_type_and_object_meta(schema) {
            owned = with_type_and_object_meta(schema);
            &owned
        } else {
            schema
        };
        match schema.get("type").and_then(Value::as_str)? {
            "array" => {
                let items = schema.get("items")?;
                let item = Decl::from_schema(items, flag(items, "x-kubernetes-embedded-resource"))?;
                let max = int_of(schema, "maxItems")
                    .map(|n| n.max(0))
                    .unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (item.min_size + 1));
                Some(simple(Shape::List(Box::new(item)), 2, max))
            }
            "object" => {
                if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                    let value = Decl::from_schema(extra, flag(extra, "x-kubernetes-embedded-resource"))?;
                    let max = int_of(schema, "maxProperties")
                        .map(|n| n.max(0))
                        .unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (value.min_size + 6));
                    let key = simple(Shape::String, MIN_STRING_SIZE, 0);
                    return Some(simple(Shape::Map(Box::new(key), Box::new(value)), 2, max));
                }
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut fields = BTreeMap::new();
                let mut min_size = 2;
                for (name, prop) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
                    if let Some(field) = Decl::from_schema(prop, flag(prop, "x-kubernetes-embedded-resource")) {
                        if required.contains(&name.as_str()) && prop.get("default").is_none() {
                            min_size += name.len() as i64 + field.min_size + 4;
                        }
                        fields.insert(name.clone(), field);
                    }
                }
                Some(simple(Shape::Object(fields), min_size, 0))
            }
            "string" => {
                let per_request = MAX_REQUEST_SIZE_BYTES - 2;
                Some(match schema.get("format").and_then(Value::as_str) {
                    Some("byte") => {
                        simple(Shape::Bytes, MIN_STRING_SIZE, int_of(schema, "maxLength").unwrap_or(per_request))
                    }
                    Some("duration") => simple(Shape::Duration, MIN_DURATION_SIZE_JSON, MAX_DURATION_SIZE_JSON),
                    Some("date") => simple(Shape::Timestamp, JSON_DATE_SIZE, JSON_DATE_SIZE),
                    Some("date-time") => simple(Shape::Timestamp, MIN_DATETIME_SIZE_JSON, MAX_DATETIME_SIZE_JSON),
                    _ => {
                        let max = if let Some(n) = int_of(schema, "maxLength") {
                            n.max(0) * 4
                        } else if let Some(values) = schema.get("enum").and_then(Value::as_array) {
                            values.iter().filter_map(Value::as_str).map(|s| s.len() as i64).max().unwrap_or(0)
                        } else {
                            per_request
                        };
                        simple(Shape::String, MIN_STRING_SIZE, max)
                    }
                })
            }
            "boolean" => Some(simple(Shape::Bool, MIN_BOOL_SIZE, 0)),
            "number" => Some(simple(Shape::Double, MIN_NUMBER_SIZE, 0)),
            "integer" => Some(simple(Shape::Int, MIN_NUMBER_SIZE, 0)),
            _ => None,
        }
    }
}

fn has_type_and_object_meta(schema: &Value) -> bool {
    let ty = |p: &str, t: &str| schema.pointer(p).and_then(|n| n.get("type")).and_then(Value::as_str) == Some(t);
    ty("/properties/kind", "string")
        && ty("/properties/apiVersion", "string")
        && ty("/properties/metadata", "object")
        && ty("/properties/metadata/properties/name", "string")
        && ty("/properties/metadata/properties/generateName", "string")
}

fn with_type_and_object_meta(schema: &Value) -> Value {
    let mut out = schema.clone();
    let string = serde_json::json!({"type": "string"});
    if let Some(map) = out.as_object_mut() {
        let props = map.entry("properties").or_insert_with(|| Value::Object(Default::default()));
        if let Some(props) = props.as_object_mut() {
            props.insert("kind".into(), string.clone());
            props.insert("apiVersion".into(), string.clone());
            props.insert(
                "metadata".into(),
                serde_json::json!({"type": "object", "properties": {"name": string, "generateName": string}}),
            );
        }
    }
    out
}

/// A type as the checker sees it: schema-declared or built from literals and calls.
#[derive(Clone, Debug)]
enum Ty<'a> {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    Null,
    Dyn,
    List(Box<Ty<'a>>),
    Map(Box<Ty<'a>>, Box<Ty<'a>>),
    Object(&'a BTreeMap<String, Decl>),
}

impl<'a> Ty<'a> {
    fn of(decl: &'a Decl) -> Ty<'a> {
        match &decl.shape {
            Shape::Bool => Ty::Bool,
            Shape::Int => Ty::Int,
            Shape::Double => Ty::Double,
            Shape::String => Ty::String,
            Shape::Bytes => Ty::Bytes,
            Shape::Duration => Ty::Duration,
            Shape::Timestamp => Ty::Timestamp,
            Shape::Dyn => Ty::Dyn,
            Shape::List(item) => Ty::List(Box::new(Ty::of(item))),
            Shape::Map(key, value) => Ty::Map(Box::new(Ty::of(key)), Box::new(Ty::of(value))),
            Shape::Object(fields) => Ty::Object(fields),
        }
    }

    fn is_scalar(&self) -> bool {
        matches!(self, Ty::Bool | Ty::Int | Ty::Uint | Ty::Double | Ty::Duration | Ty::Timestamp)
    }

    fn is_text(&self) -> bool {
        matches!(self, Ty::String | Ty::Bytes)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    List,
    Map,
    Unknown,
}

/// The sizes of a container's keys (indices) and values, where the expression shows them.
#[derive(Clone, Copy, Debug)]
struct Entry {
    container: Container,
    key: Range,
    val: Range,
}

impl Entry {
    fn union(a: Option<Entry>, b: Option<Entry>) -> Option<Entry> {
        let (a, b) = (a?, b?);
        Some(Entry { container: a.container, key: a.key.union(b.key), val: a.val.union(b.val) })
    }
}

/// What the estimate knows of one expression once it is priced.
#[derive(Clone, Debug)]
struct Node<'a> {
    cost: Range,
    ty: Ty<'a>,
    /// Field path from a variable (`self`, `@items`, `@keys`, `@values`, field names), or empty.
    path: Vec<String>,
    /// A size computed from the expression itself (literals, call results, comprehensions).
    size: Option<Range>,
    /// The size a local variable was bound with, used last.
    var_size: Option<Range>,
    entry: Option<Entry>,
    literal: bool,
}

impl<'a> Node<'a> {
    fn new(cost: Range, ty: Ty<'a>) -> Self {
        Node { cost, ty, path: Vec::new(), size: None, var_size: None, entry: None, literal: false }
    }
}

#[derive(Clone, Debug)]
struct Local<'a> {
    name: String,
    path: Vec<String>,
    size: Option<Range>,
    entry: Option<Entry>,
    ty: Ty<'a>,
}

struct Coster<'a> {
    root: &'a Decl,
    locals: Vec<Local<'a>>,
}

const ACCUMULATORS: [&str; 3] = ["@result", "__result__", "@__result__"];

impl<'a> Coster<'a> {
    /// kube-apiserver's size estimator: walks the path from the rule's node, ignoring the variable.
    fn estimate_size(&self, path: &[String]) -> Option<Range> {
        if path.is_empty() {
            return None;
        }
        let mut node = self.root;
        for name in &path[1..] {
            node = match (name.as_str(), &node.shape) {
                ("@items" | "@values", Shape::List(item)) => item,
                ("@items" | "@values", Shape::Map(_, value)) => value,
                ("@keys", Shape::Map(key, _)) => key,
                (field, Shape::Object(fields)) => fields.get(field)?,
                _ => return None,
            };
        }
        Some(Range { min: 0, max: node.max_elements })
    }

    fn compute_size(&self, n: &Node<'a>) -> Option<Range> {
        if let Some(size) = n.size {
            return Some(size);
        }
        if let Some(size) = self.estimate_size(&n.path) {
            return Some(size);
        }
        if n.ty.is_scalar() {
            return Some(Range::fixed(1));
        }
        n.var_size
    }

    fn size_or_unknown(&self, n: &Node<'a>) -> Range {
        self.compute_size(n).unwrap_or(Range::UNKNOWN)
    }

    fn local(&self, name: &str) -> Option<&Local<'a>> {
        self.locals.iter().rev().find(|l| l.name == name)
    }

    fn cost(&mut self, e: &IdedExpr) -> Node<'a> {
        match &e.expr {
            Expr::Literal(lit) => {
                let (ty, size) = match lit {
                    LiteralValue::String(s) => (Ty::String, s.inner().chars().count() as u64),
                    LiteralValue::Bytes(b) => (Ty::Bytes, b.inner().len() as u64),
                    LiteralValue::Boolean(_) => (Ty::Bool, 1),
                    LiteralValue::Int(_) => (Ty::Int, 1),
                    LiteralValue::UInt(_) => (Ty::Uint, 1),
                    LiteralValue::Double(_) => (Ty::Double, 1),
                    LiteralValue::Null => (Ty::Null, 1),
                };
                let mut n = Node::new(Range::fixed(0), ty);
                n.size = Some(Range::fixed(size));
                n.literal = true;
                n
            }
            Expr::Ident(name) => {
                let mut n = Node::new(Range::fixed(1), Ty::Dyn);
                if let Some(local) = self.local(name) {
                    n.path = local.path.clone();
                    n.var_size = local.size;
                    n.entry = local.entry;
                    n.ty = local.ty.clone();
                } else {
                    n.path = vec![name.clone()];
                    if name == "self" || name == "oldSelf" {
                        n.ty = Ty::of(self.root);
                    }
                }
                n
            }
            Expr::Select(select) => {
                let operand = self.cost(&select.operand);
                if select.test {
                    return Node::new(Range::fixed(1).add(operand.cost), Ty::Bool);
                }
                let mut cost = operand.cost;
                if matches!(operand.ty, Ty::Map(..) | Ty::Object(_)) {
                    cost = cost.add(Range::fixed(1));
                }
                let ty = match &operand.ty {
                    Ty::Object(fields) => fields.get(&select.field).map(Ty::of).unwrap_or(Ty::Dyn),
                    Ty::Map(_, value) => (**value).clone(),
                    _ => Ty::Dyn,
                };
                let mut n = Node::new(cost, ty);
                n.path = operand.path;
                n.path.push(select.field.clone());
                n
            }
            Expr::Call(call) => self.cost_call(call),
            Expr::List(list) => {
                let mut cost = Range::fixed(LIST_CREATE);
                let mut item = Range { min: if list.elements.is_empty() { 0 } else { u64::MAX }, max: 0 };
                let mut elem_ty = None;
                for element in &list.elements {
                    let n = self.cost(element);
                    cost = cost.add(n.cost);
                    item = item.union(self.size_or_unknown(&n));
                    elem_ty.get_or_insert(n.ty);
                }
                let mut n = Node::new(cost, Ty::List(Box::new(elem_ty.unwrap_or(Ty::Dyn))));
                n.size = Some(Range::fixed(list.elements.len() as u64));
                n.entry = Some(Entry { container: Container::List, key: Range::fixed(1), val: item });
                n.literal = true;
                n
            }
            Expr::Map(map) => {
                let mut cost = Range::fixed(MAP_CREATE);
                let empty = if map.entries.is_empty() { 0 } else { u64::MAX };
                let (mut key, mut val) = (Range { min: empty, max: 0 }, Range { min: empty, max: 0 });
                let mut types = None;
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        let k = self.cost(&entry.key);
                        let v = self.cost(&entry.value);
                        cost = cost.add(k.cost).add(v.cost);
                        key = key.union(self.size_or_unknown(&k));
                        val = val.union(self.size_or_unknown(&v));
                        types.get_or_insert((k.ty, v.ty));
                    }
                }
                let (kt, vt) = types.unwrap_or((Ty::Dyn, Ty::Dyn));
                let mut n = Node::new(cost, Ty::Map(Box::new(kt), Box::new(vt)));
                n.size = Some(Range::fixed(map.entries.len() as u64));
                n.entry = Some(Entry { container: Container::Map, key, val });
                n.literal = true;
                n
            }
            Expr::Struct(s) => {
                let mut cost = Range::fixed(STRUCT_CREATE);
                for entry in &s.entries {
                    if let EntryExpr::StructField(field) = &entry.expr {
                        cost = cost.add(self.cost(&field.value).cost);
                    }
                }
                Node::new(cost, Ty::Dyn)
            }
            Expr::Comprehension(comp) => self.cost_comprehension(comp),
            Expr::Unspecified => Node::new(Range::fixed(0), Ty::Dyn),
        }
    }

    fn push_local(&mut self, name: &str, n: &Node<'a>) {
        let size = self.compute_size(n);
        self.locals.push(Local {
            name: name.to_string(),
            path: n.path.clone(),
            size,
            entry: n.entry,
            ty: n.ty.clone(),
        });
    }

    fn push_iter(&mut self, name: &str, range: &Node<'a>, want_key: bool) {
        let container = match (range.entry.map(|e| e.container), &range.ty) {
            (Some(c), _) if c != Container::Unknown => c,
            (_, Ty::List(_)) => Container::List,
            (_, Ty::Map(..)) => Container::Map,
            _ => Container::Unknown,
        };
        let (sub, size, ty) = match (container, want_key) {
            (Container::List, true) => ("@indices", range.entry.map(|e| e.key), Ty::Int),
            (Container::List, false) => ("@items", range.entry.map(|e| e.val), list_item(&range.ty)),
            (_, true) => ("@keys", range.entry.map(|e| e.key), map_key(&range.ty)),
            (_, false) => ("@values", range.entry.map(|e| e.val), map_value(&range.ty)),
        };
        let mut path = range.path.clone();
        path.push(sub.to_string());
        self.locals.push(Local { name: name.to_string(), path, size, entry: None, ty });
    }

    fn pop_local(&mut self, name: &str) {
        if let Some(i) = self.locals.iter().rposition(|l| l.name == name) {
            self.locals.remove(i);
        }
    }

    fn cost_comprehension(&mut self, comp: &ComprehensionExpr) -> Node<'a> {
        let range = self.cost(&comp.iter_range);
        let init = self.cost(&comp.accu_init);
        let is_bind = matches!(&comp.iter_range.expr, Expr::List(l) if l.elements.is_empty())
            && matches!(&comp.loop_cond.expr, Expr::Literal(LiteralValue::Boolean(b)) if !**b)
            && !ACCUMULATORS.contains(&comp.accu_var.as_str());
        if is_bind {
            self.push_local(&comp.accu_var, &init);
            let result = self.cost(&comp.result);
            self.pop_local(&comp.accu_var);
            let mut n = result.clone();
            n.cost = range.cost.add(init.cost).add(result.cost);
            n.size = self.compute_size(&result);
            return n;
        }
        let mut cost = range.cost.add(init.cost);
        self.push_local(&comp.accu_var, &init);
        match &comp.iter_var2 {
            Some(second) => {
                self.push_iter(&comp.iter_var, &range, true);
                self.push_iter(second, &range, false);
            }
            None => {
                let is_list =
                    matches!(range.ty, Ty::List(_)) || range.entry.is_some_and(|e| e.container == Container::List);
                self.push_iter(&comp.iter_var, &range, !is_list);
            }
        }
        let cond = self.cost(&comp.loop_cond);
        let step = self.cost(&comp.loop_step);
        if let Some(second) = &comp.iter_var2 {
            self.pop_local(second);
        }
        self.pop_local(&comp.iter_var);
        // map() and filter() start from `[]`; their accumulator has the step's element type.
        if matches!(&comp.accu_init.expr, Expr::List(l) if l.elements.is_empty())
            && let Some(local) = self.locals.iter_mut().rev().find(|l| l.name == comp.accu_var)
        {
            local.ty = step.ty.clone();
        }
        let result = self.cost(&comp.result);
        self.pop_local(&comp.accu_var);
        cost = cost.add(result.cost);
        let count = self.size_or_unknown(&range);
        cost = cost.add(count.mul(step.cost.add(cond.cost)));
        let mut n = Node::new(cost, result.ty.clone());
        match &comp.accu_init.expr {
            Expr::Literal(_) => n.size = self.compute_size(&init),
            Expr::List(_) | Expr::Map(_) => {
                n.size = Some(count);
                n.entry = step.entry;
            }
            _ => {}
        }
        n
    }

    fn cost_call(&mut self, call: &CallExpr) -> Node<'a> {
        if call.func_name == "dyn" && call.target.is_none() && call.args.len() == 1 {
            let mut arg = self.cost(&call.args[0]);
            arg.cost = Range::fixed(1).add(arg.cost);
            arg.size = self.compute_size(&arg);
            arg.path.clear();
            arg.ty = Ty::Dyn;
            return arg;
        }
        let args: Vec<Node<'a>> = call.args.iter().map(|a| self.cost(a)).collect();
        let target = call.target.as_ref().map(|t| self.cost(t));
        let arg_sum = args.iter().fold(Range::fixed(0), |s, a| s.add(a.cost));
        let mut sum = target.as_ref().map(|t| t.cost).unwrap_or(Range::fixed(0));
        let one = Range::fixed(1).add(arg_sum);
        let mut result_size = None;
        let mut entry = None;
        let mut path = Vec::new();
        let name = call.func_name.as_str();
        let (fn_cost, ty) = match (name, target.as_ref(), args.as_slice()) {
            ("_&&_" | "_||_", None, [l, r]) => (Range { min: l.cost.min, max: l.cost.add(r.cost).max }, Ty::Bool),
            ("_?_:_", None, [c, t, f]) => {
                result_size = Some(self.size_or_unknown(t).union(self.size_or_unknown(f)));
                entry = Entry::union(t.entry, f.entry);
                let ty = if matches!(t.ty, Ty::Dyn) { f.ty.clone() } else { t.ty.clone() };
                (c.cost.add(t.cost.union(f.cost)), ty)
            }
            ("startsWith" | "endsWith", Some(_), [a]) => {
                (self.size_or_unknown(a).factor(STRING_TRAVERSAL).add(arg_sum), Ty::Bool)
            }
            ("matches", Some(t), [a]) => {
                let text = self.size_or_unknown(t).add(Range::fixed(1)).factor(STRING_TRAVERSAL);
                let regex = self.size_or_unknown(a).factor(REGEX_LENGTH);
                (text.mul(regex).add(arg_sum), Ty::Bool)
            }
            ("contains", Some(t), [a]) if !matches!(t.ty, Ty::List(_)) => {
                let text = self.size_or_unknown(t).factor(STRING_TRAVERSAL);
                let sub = self.size_or_unknown(a).factor(STRING_TRAVERSAL);
                (text.mul(sub).add(arg_sum), Ty::Bool)
            }
            ("@in", None, [_, container]) => {
                let list = self.size_or_unknown(container).factor(1.0).add(arg_sum);
                let cost = match (&container.ty, container.entry.map(|e| e.container)) {
                    (Ty::Map(..), _) | (_, Some(Container::Map)) => one,
                    (Ty::List(_), _) | (_, Some(Container::List)) => list,
                    _ => list.union(one),
                };
                (cost, Ty::Bool)
            }
            ("_+_", None, [l, r]) => {
                let size = self.size_or_unknown(l).add(self.size_or_unknown(r));
                entry = Entry::union(l.entry, r.entry);
                let ty = match (&l.ty, &r.ty) {
                    (Ty::List(item), _) if matches!(**item, Ty::Dyn) => r.ty.clone(),
                    (Ty::Dyn, _) => r.ty.clone(),
                    _ => l.ty.clone(),
                };
                let text = size.factor(STRING_TRAVERSAL).add(arg_sum);
                let cost = match (&l.ty, &r.ty) {
                    (Ty::List(_), _) | (_, Ty::List(_)) => {
                        result_size = Some(size);
                        one
                    }
                    (a, b) if a.is_text() || b.is_text() => {
                        result_size = Some(size);
                        text
                    }
                    (Ty::Dyn, _) | (_, Ty::Dyn) => {
                        result_size = Some(size);
                        text.union(one)
                    }
                    _ => one,
                };
                (cost, ty)
            }
            ("_==_" | "_!=_", None, [l, r]) => {
                (compare(self.size_or_unknown(l), self.size_or_unknown(r), arg_sum), Ty::Bool)
            }
            ("_<_" | "_>_" | "_<=_" | "_>=_", None, [l, r]) => {
                let text = compare(self.size_or_unknown(l), self.size_or_unknown(r), arg_sum);
                let cost = match (&l.ty, &r.ty) {
                    (a, b) if a.is_text() && b.is_text() => text,
                    (Ty::Dyn, _) | (_, Ty::Dyn) => text.union(one),
                    _ => one,
                };
                (cost, Ty::Bool)
            }
            ("_[_]", None, [container, _]) => {
                let is_map = matches!(container.ty, Ty::Map(..))
                    || container.entry.is_some_and(|e| e.container == Container::Map);
                path = container.path.clone();
                path.push(if is_map { "@values" } else { "@items" }.to_string());
                result_size = container.entry.map(|e| e.val);
                let ty = if is_map { map_value(&container.ty) } else { list_item(&container.ty) };
                (one, ty)
            }
            ("bytes", None, [a]) if matches!(a.ty, Ty::String) => {
                let s = self.size_or_unknown(a);
                result_size = Some(Range { min: s.min, max: s.max.saturating_mul(4) });
                (s.factor(STRING_TRAVERSAL).add(arg_sum), Ty::Bytes)
            }
            ("string", None, [a]) if matches!(a.ty, Ty::Bytes) => {
                let s = self.size_or_unknown(a);
                result_size = Some(Range { min: s.min / 4, max: s.max });
                (s.factor(STRING_TRAVERSAL).add(arg_sum), Ty::String)
            }
            (library, Some(t), _) if LINEAR_LIBRARY_FUNCTIONS.contains(&library) => {
                (self.size_or_unknown(t).factor(STRING_TRAVERSAL).add(one), Ty::Dyn)
            }
            _ => (one, result_type(name, target.as_ref(), &args)),
        };
        sum = sum.add(fn_cost);
        let mut n = Node::new(sum, ty);
        n.path = path;
        n.entry = entry;
        n.size = result_size;
        if n.size.is_none() {
            n.size = self.compute_size(&n);
        }
        n
    }
}

/// Functions of Kubernetes' CEL libraries whose cost grows with their receiver.
const LINEAR_LIBRARY_FUNCTIONS: [&str; 16] = [
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "find",
    "findAll",
    "isSorted",
    "sum",
    "min",
    "max",
    "reverse",
];

fn compare(l: Range, r: Range, arg_sum: Range) -> Range {
    let smallest_max = l.max.min(r.max);
    let min = if smallest_max > 0 { 1 } else { 0 };
    Range { min, max: smallest_max }.factor(STRING_TRAVERSAL).add(arg_sum)
}

fn list_item<'a>(ty: &Ty<'a>) -> Ty<'a> {
    match ty {
        Ty::List(item) => (**item).clone(),
        _ => Ty::Dyn,
    }
}

fn map_key<'a>(ty: &Ty<'a>) -> Ty<'a> {
    match ty {
        Ty::Map(key, _) => (**key).clone(),
        _ => Ty::Dyn,
    }
}

fn map_value<'a>(ty: &Ty<'a>) -> Ty<'a> {
    match ty {
        Ty::Map(_, value) => (**value).clone(),
        _ => Ty::Dyn,
    }
}

fn result_type<'a>(name: &str, target: Option<&Node<'a>>, args: &[Node<'a>]) -> Ty<'a> {
    match name {
        "!_" | "@not_strictly_false" | "has" | "matches" | "startsWith" | "endsWith" | "contains" => Ty::Bool,
        "size" | "int" => Ty::Int,
        "uint" => Ty::Uint,
        "double" => Ty::Double,
        "string" => Ty::String,
        "bytes" => Ty::Bytes,
        "duration" => Ty::Duration,
        "timestamp" => Ty::Timestamp,
        "_-_" | "_*_" | "_/_" | "_%_" | "-_" => args.first().map(|a| a.ty.clone()).unwrap_or(Ty::Dyn),
        _ => target.map(|_| Ty::Dyn).unwrap_or(Ty::Dyn),
    }
}

/// The estimated cost range of `rule` on a node declared as `decl`, or the parse error.
pub fn rule_cost(rule: &str, decl: &Decl) -> Result<Range, String> {
    let ast = cel::parser::Parser::new().parse(rule).map_err(|e| e.to_string())?;
    let mut coster = Coster { root: decl, locals: Vec::new() };
    Ok(coster.cost(&ast).cost)
}

fn rule_cardinality(decl: &Decl) -> u64 {
    (MAX_REQUEST_SIZE_BYTES / (decl.min_size + 1)).max(0) as u64
}

/// How many times a child's data can occur for each occurrence of `schema`, or unbounded.
fn max_elements(schema: &Value) -> Option<u64> {
    match schema.get("type").and_then(Value::as_str) {
        Some("object") if schema.get("additionalProperties").is_some() => {
            int_of(schema, "maxProperties").map(|n| n.max(0) as u64)
        }
        Some("array") => int_of(schema, "maxItems").map(|n| n.max(0) as u64),
        _ => Some(1),
    }
}

/// One rule's cost as kube-apiserver counts it: estimate times cardinality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCost {
    /// The field path kube-apiserver names the rule by.
    pub path: String,
    pub rule: String,
    pub cost: u64,
}

/// Every rule of one schema with its cost, and the total.
#[derive(Clone, Debug, Default)]
pub struct SchemaCost {
    pub rules: Vec<RuleCost>,
    pub total: u64,
}

/// Prices every rule (and `messageExpression`) of `schema`, whose field path is `prefix`.
pub fn schema_cost(schema: &Value, prefix: &str) -> SchemaCost {
    let mut out = SchemaCost::default();
    walk(schema, prefix, Some(1), true, &mut out);
    out
}

fn walk(schema: &Value, path: &str, cardinality: Option<u64>, root: bool, out: &mut SchemaCost) {
    let child_cardinality = match (cardinality, max_elements(schema)) {
        (Some(c), Some(m)) => Some(c.saturating_mul(m)),
        _ => None,
    };
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(child, &format!("{path}.properties[{name}]"), child_cardinality, false, out);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        walk(items, &format!("{path}.items"), child_cardinality, false, out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        walk(extra, &format!("{path}.additionalProperties"), child_cardinality, false, out);
    }
    let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) else { return };
    let Some(decl) = Decl::from_schema(schema, root || flag(schema, "x-kubernetes-embedded-resource")) else { return };
    let times = cardinality.unwrap_or_else(|| rule_cardinality(&decl));
    for (i, rule) in rules.iter().enumerate() {
        for (key, scale) in [("rule", true), ("messageExpression", false)] {
            let Some(text) = rule.get(key).and_then(Value::as_str) else { continue };
            let Ok(cost) = rule_cost(text, &decl) else { continue };
            let cost = if scale && cost.max > 0 { cost.max.saturating_mul(times) } else { cost.max };
            out.total = out.total.saturating_add(cost);
            out.rules.push(RuleCost {
                path: format!("{path}.x-kubernetes-validations[{i}].{key}"),
                rule: text.to_string(),
                cost,
            });
        }
    }
}

fn factor_message(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// kube-apiserver's refusals of `schema` for cost, as (field, message) pairs; empty when it fits.
pub fn schema_problems(schema: &Value, prefix: &str) -> Vec<(String, String)> {
    let cost = schema_cost(schema, prefix);
    let mut problems = Vec::new();
    for rule in &cost.rules {
        if rule.cost > RULE_COST_LIMIT {
            let what =
                if rule.path.ends_with(".rule") { "estimated rule cost" } else { "estimated messageExpression cost" };
            problems
                .push((rule.path.clone(), format!("Forbidden: {}", factor_message(what, rule.cost, RULE_COST_LIMIT))));
        }
    }
    if cost.total > CRD_COST_LIMIT {
        let mut expensive: Vec<&RuleCost> = cost.rules.iter().filter(|r| r.cost >= CRD_COST_LIMIT / 100).collect();
        expensive.sort_by_key(|r| std::cmp::Reverse(r.cost));
        for rule in expensive.into_iter().take(4) {
            problems.push((
                rule.path.clone(),
                "Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                    .to_string(),
            ));
        }
        problems.push((
            prefix.to_string(),
            format!(
                "Forbidden: {}",
                factor_message(
                    "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                    cost.total,
                    CRD_COST_LIMIT
                )
            ),
        ));
    }
    problems
}

/// The schemas of a CRD's `spec.versions` with the path kube-apiserver names each by: one
/// `spec.validation.openAPIV3Schema` when every version has the same schema (it stores them so).
pub fn crd_schemas(spec: &Value) -> Vec<(String, &Value)> {
    let versions: Vec<&Value> = spec.get("versions").and_then(Value::as_array).into_iter().flatten().collect();
    let schemas: Vec<Option<&Value>> = versions.iter().map(|v| v.pointer("/schema/openAPIV3Schema")).collect();
    if let Some(Some(first)) = schemas.first()
        && schemas.iter().all(|s| *s == Some(first))
    {
        return vec![("spec.validation.openAPIV3Schema".to_string(), *first)];
    }
    schemas
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| Some((format!("spec.versions[{i}].schema.openAPIV3Schema"), s?)))
        .collect()
}

/// Every cost refusal kube-apiserver would give for a CRD's `spec`.
pub fn crd_problems(spec: &Value) -> Vec<(String, String)> {
    crd_schemas(spec).into_iter().flat_map(|(prefix, schema)| schema_problems(schema, &prefix)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost(rule: &str, schema: Value) -> u64 {
        let decl = Decl::from_schema(&schema, false).expect("declared");
        rule_cost(rule, &decl).expect("parses").max
    }

    #[test]
    fn scalar_rules_cost_what_cel_go_charges() {
        let schema = json!({"type": "object", "properties": {
            "operator": {"type": "string", "enum": ["In", "NotIn", "DoesNotExist"]},
            "values": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 63}},
            "a": {"type": "string"}, "b": {"type": "string"}
        }});
        // ident 1 + select 1, literal 0, and the comparison of at most 2 characters: ceil(0.2) = 1.
        assert_eq!(cost("self.operator != 'In'", schema.clone()), 3);
        // has(): 1 + the operand.
        assert_eq!(cost("has(self.a) != has(self.b)", schema.clone()), 5);
        // size() is 1; `>` on ints is 1.
        assert_eq!(cost("size(self.values) > 0", schema.clone()), 4);
        // && costs both sides.
        assert_eq!(cost("has(self.values) && size(self.values) > 0", schema), 6);
    }

    #[test]
    fn comprehensions_cost_their_range_times_each_step() {
        let bounded = json!({"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 5}});
        // all(): range 1 + result 1 + 10 × (condition 2 + step (1 + (1 + ceil(min(20, 0) × 0.1)))).
        assert_eq!(cost("self.all(x, x != '')", bounded), 1 + 1 + 10 * (2 + 2));
        let unbounded = json!({"type": "array", "items": {"type": "string"}});
        let n = (MAX_REQUEST_SIZE_BYTES as u64 - 2) / 3;
        assert_eq!(cost("self.all(x, x != '')", unbounded), 1 + 1 + n * (2 + 2));
    }

    #[test]
    fn regular_expressions_cost_text_length_times_pattern_length() {
        let s = json!({"type": "string", "maxLength": 10});
        // (40 + 1) × 0.1 → 5; 8 characters × 0.25 → 2; product 10, plus the ident.
        assert_eq!(cost("self.matches('^[a-z]+$')", s), 11);
    }

    #[test]
    fn a_rule_on_an_unbounded_list_item_is_multiplied_by_what_fits_in_a_request() {
        let schema = json!({"type": "object", "properties": {"items": {"type": "array", "items": {
            "type": "object", "required": ["key"], "properties": {"key": {"type": "string"}},
            "x-kubernetes-validations": [{"rule": "self.key.matches('^[a-z]+$')"}]
        }}}});
        let cost = schema_cost(&schema, "spec.validation.openAPIV3Schema");
        assert_eq!(cost.rules.len(), 1);
        let decl = Decl::from_schema(&schema["properties"]["items"]["items"], false).expect("declared");
        assert_eq!(decl.min_size, 2 + 3 + 2 + 4);
        let per_rule = rule_cost("self.key.matches('^[a-z]+$')", &decl).expect("parses").max;
        assert_eq!(cost.rules[0].cost, per_rule * (MAX_REQUEST_SIZE_BYTES as u64 / 12));
        let problems = schema_problems(&schema, "spec.validation.openAPIV3Schema");
        assert_eq!(
            problems[0].0,
            "spec.validation.openAPIV3Schema.properties[items].items.x-kubernetes-validations[0].rule"
        );
        assert!(problems[0].1.starts_with("Forbidden: estimated rule cost exceeds budget by factor of more than 100x"));
    }

    #[test]
    fn bounds_bring_the_same_rule_under_the_limits() {
        let schema = json!({"type": "object", "properties": {"items": {"type": "array", "maxItems": 100, "items": {
            "type": "object", "required": ["key"], "properties": {"key": {"type": "string", "maxLength": 316}},
            "x-kubernetes-validations": [{"rule": "self.key.matches('^[a-z]+$')"}]
        }}}});
        assert!(schema_problems(&schema, "spec").is_empty());
        assert!(schema_cost(&schema, "spec").total < RULE_COST_LIMIT);
    }

    #[test]
    fn the_factor_is_worded_as_kube_apiserver_words_it() {
        assert!(factor_message("x", 12_000_000, RULE_COST_LIMIT).contains("factor of 1.200000x"));
        assert!(factor_message("x", 5_280_000_000, CRD_COST_LIMIT).contains("factor of 52.8x"));
        assert!(factor_message("x", u64::MAX, CRD_COST_LIMIT).contains("factor of more than 100x"));
    }
}

#[cfg(test)]
mod rafter_crds {
    use super::*;

    #[test]
    fn rafters_generated_crds_stay_within_a_quarter_of_both_limits() {
        for (file, crd) in rafter::api::crds::all() {
            let crd = serde_json::to_value(&crd).expect("a CRD serialises");
            for (prefix, schema) in crd_schemas(&crd["spec"]) {
                let cost = schema_cost(schema, &prefix);
                assert!(cost.total <= CRD_COST_LIMIT / 4, "{file}: total {} of {CRD_COST_LIMIT}", cost.total);
                for rule in &cost.rules {
                    assert!(rule.cost <= RULE_COST_LIMIT / 4, "{file}: {} costs {}", rule.path, rule.cost);
                }
            }
        }
    }

    #[test]
    fn no_rule_is_left_under_status() {
        for (file, crd) in rafter::api::crds::all() {
            let crd = serde_json::to_value(&crd).expect("a CRD serialises");
            for (prefix, schema) in crd_schemas(&crd["spec"]) {
                let under_status: Vec<RuleCost> = schema_cost(schema, &prefix)
                    .rules
                    .into_iter()
                    .filter(|r| r.path.contains(".properties[status]"))
                    .collect();
                assert!(under_status.is_empty(), "{file}: {under_status:?}");
            }
        }
    }
}
