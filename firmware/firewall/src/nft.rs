//! The intended ruleset as one nftables JSON transaction (built with the `nftables` crate's
//! schema), applied through `nft -j -f -` with nft's own error text captured, and read back.
//!
//! ## Why not delete and re-create the table
//! That would also empty the run-time sets (pinholes of calls in progress, the blocklist)
//! and reset them on every commit. Instead one transaction:
//! `add table` → `flush table` (drops every rule, keeps sets) → delete chains and sets the
//! new policy no longer has, and sets it has in another shape (type or flags, e.g. pinhole
//! sets from before pinholes had a source; their elements are lost) → `add chain`/`add set`
//! → `flush set` + `add element` for every config-owned set → `add rule`. `flush table`
//! keeps set contents, which is why every config-owned set is flushed explicitly: otherwise
//! a removed prefix would stay allowed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nftables::expr::{self, Expression, NamedExpression};
use nftables::schema::{self, FlushObject, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{self, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

use crate::matches::{self, Matches};
use crate::model::*;
use crate::FirewallError;

fn s(v: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_owned()))
}

fn payload(proto: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(expr::Payload::PayloadField(
        expr::PayloadField {
            protocol: Cow::Owned(proto.to_owned()),
            field: Cow::Owned(field.to_owned()),
        },
    )))
}

fn meta(key: expr::MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(expr::Meta { key }))
}

/// One value, or an anonymous set of values.
fn one_or_set(values: &[&str]) -> Expression<'static> {
    match values {
        [one] => s(one),
        many => Expression::Named(NamedExpression::Set(
            many.iter().map(|v| expr::SetItem::Element(s(v))).collect(),
        )),
    }
}

fn m(left: Expression<'static>, right: Expression<'static>, op: Operator) -> Statement<'static> {
    Statement::Match(stmt::Match { left, right, op })
}

fn set_ref(name: &str) -> Expression<'static> {
    s(&format!("@{name}"))
}

fn cond_stmt(c: &Cond) -> Statement<'static> {
    match c {
        Cond::Iifname(v) | Cond::Oifname(v) => {
            let key = if matches!(c, Cond::Iifname(_)) {
                expr::MetaKey::Iifname
            } else {
                expr::MetaKey::Oifname
            };
            let names: Vec<&str> = v.iter().map(String::as_str).collect();
            m(meta(key), one_or_set(&names), Operator::EQ)
        }
        Cond::CtState(v) => m(
            Expression::Named(NamedExpression::CT(expr::CT {
                key: Cow::Borrowed("state"),
                family: None,
                dir: None,
            })),
            Expression::List(v.iter().map(|x| s(x)).collect()),
            Operator::IN,
        ),
        Cond::L4Proto(v) => m(meta(expr::MetaKey::L4proto), one_or_set(v), Operator::EQ),
        Cond::SaddrIn { v6, set } => m(
            payload(if *v6 { "ip6" } else { "ip" }, "saddr"),
            set_ref(set),
            Operator::EQ,
        ),
        Cond::DaddrIn { v6, set } => m(
            payload(if *v6 { "ip6" } else { "ip" }, "daddr"),
            set_ref(set),
            Operator::EQ,
        ),
        Cond::DportIn(set) => m(payload("th", "dport"), set_ref(set), Operator::EQ),
        Cond::Dport(p) => m(
            payload("th", "dport"),
            Expression::Number(u32::from(*p)),
            Operator::EQ,
        ),
        Cond::IcmpType(v) => m(payload("icmp", "type"), one_or_set(v), Operator::EQ),
        Cond::Icmpv6Type(v) => m(payload("icmpv6", "type"), one_or_set(v), Operator::EQ),
        Cond::HopLimit(h) => m(
            payload("ip6", "hoplimit"),
            Expression::Number(u32::from(*h)),
            Operator::EQ,
        ),
        Cond::PinholeIn { v6, set } => m(
            Expression::Named(NamedExpression::Concat(vec![
                payload(if *v6 { "ip6" } else { "ip" }, "saddr"),
                payload(if *v6 { "ip6" } else { "ip" }, "daddr"),
                meta(expr::MetaKey::L4proto),
                payload("th", "dport"),
            ])),
            set_ref(set),
            Operator::EQ,
        ),
    }
}

fn rule_obj(chain: &str, r: &RuleDef) -> NfListObject<'static> {
    let mut stmts: Vec<Statement<'static>> = r.conds.iter().map(cond_stmt).collect();
    stmts.push(Statement::Counter(stmt::Counter::Anonymous(Some(
        stmt::AnonymousCounter {
            packets: Some(0),
            bytes: Some(0),
        },
    ))));
    stmts.push(match &r.verdict {
        Verdict::Accept => Statement::Accept(None),
        Verdict::Drop => Statement::Drop(None),
        Verdict::Jump(t) => Statement::Jump(stmt::JumpTarget {
            target: Cow::Owned(t.clone()),
        }),
    });
    NfListObject::Rule(schema::Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Owned(chain.to_owned()),
        expr: Cow::Owned(stmts),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(r.comment.clone())),
    })
}

fn chain_obj(c: &ChainDef) -> schema::Chain<'static> {
    let hook = c.hook.map(|h| match h {
        Hook::Input => NfHook::Input,
        Hook::Forward => NfHook::Forward,
        Hook::Output => NfHook::Output,
    });
    schema::Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(c.name.clone()),
        _type: hook.map(|_| NfChainType::Filter),
        hook,
        prio: hook.map(|_| 0),
        policy: hook.map(|_| NfChainPolicy::Drop),
        ..Default::default()
    }
}

fn set_type(kind: SetKind) -> schema::SetTypeValue<'static> {
    use schema::SetType as T;
    match kind {
        SetKind::Ipv4Prefixes | SetKind::Block4 => schema::SetTypeValue::Single(T::Ipv4Addr),
        SetKind::Ipv6Prefixes | SetKind::Block6 => schema::SetTypeValue::Single(T::Ipv6Addr),
        SetKind::Ports => schema::SetTypeValue::Single(T::InetService),
        SetKind::Pinhole4 | SetKind::Pinhole4Host => {
            schema::SetTypeValue::Concatenated(Cow::Owned(vec![
                T::Ipv4Addr,
                T::Ipv4Addr,
                T::InetProto,
                T::InetService,
            ]))
        }
        SetKind::Pinhole6 | SetKind::Pinhole6Host => {
            schema::SetTypeValue::Concatenated(Cow::Owned(vec![
                T::Ipv6Addr,
                T::Ipv6Addr,
                T::InetProto,
                T::InetService,
            ]))
        }
    }
}

fn set_obj(d: &SetDef) -> schema::Set<'static> {
    let flags = d
        .kind
        .flags()
        .into_iter()
        .filter_map(|f| match f {
            "interval" => Some(schema::SetFlag::Interval),
            "timeout" => Some(schema::SetFlag::Timeout),
            _ => None,
        })
        .collect();
    schema::Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(d.name.clone()),
        set_type: set_type(d.kind),
        flags: Some(flags),
        ..Default::default()
    }
}

fn elem_expr(e: &Elem) -> Expression<'static> {
    match e {
        Elem::Net(n) if n.prefix_len() == n.max_prefix_len() => s(&n.addr().to_string()),
        Elem::Net(n) => Expression::Named(NamedExpression::Prefix(expr::Prefix {
            addr: Box::new(s(&n.network().to_string())),
            len: u32::from(n.prefix_len()),
        })),
        Elem::Ports(p) if p.lo == p.hi => Expression::Number(u32::from(p.lo)),
        Elem::Ports(p) => Expression::Range(Box::new(expr::Range {
            range: [
                Expression::Number(u32::from(p.lo)),
                Expression::Number(u32::from(p.hi)),
            ],
        })),
    }
}

fn table_obj() -> schema::Table<'static> {
    schema::Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

/// What exists in the kernel's table before an apply.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// Names of the chains.
    pub chains: BTreeSet<String>,
    /// Names of the named sets.
    pub sets: BTreeSet<String>,
    /// Sets of the new ruleset that exist with another type or without one of its flags
    /// (e.g. pinhole sets from before pinholes had a source): the transaction deletes and
    /// re-creates them, so their elements are lost.
    pub reshaped: BTreeSet<String>,
}

impl Existing {
    /// What `observed` holds, with the sets whose shape differs from `rs`'s.
    pub fn of(rs: &Ruleset, observed: &Observed) -> Self {
        let reshaped = rs
            .sets
            .iter()
            .filter(|d| {
                observed
                    .sets
                    .get(&d.name)
                    .is_some_and(|(ty, flags)| shape_differs(d.kind, ty, flags).is_some())
            })
            .map(|d| d.name.clone())
            .collect();
        Existing {
            chains: observed.chains.keys().cloned().collect(),
            sets: observed.sets.keys().cloned().collect(),
            reshaped,
        }
    }
}

/// How a set of type words `ty` and flags `flags` differs from what `kind` needs, if it
/// does (extra flags other than `interval` are fine: the kernel adds some, e.g. `concat`).
fn shape_differs(kind: SetKind, ty: &[String], flags: &[String]) -> Option<String> {
    let want_ty = kind.type_words();
    if ty != want_ty.as_slice() {
        return Some(format!("has type {ty:?}, expected {want_ty:?}"));
    }
    let want_flags = kind.flags();
    // `interval` picks the backend: one the set has and `kind` lacks is a difference too
    // (nft cannot change a set's flags in place)
    let extra_interval = flags.iter().any(|f| f == "interval") && !want_flags.contains(&"interval");
    if extra_interval || !want_flags.iter().all(|f| flags.iter().any(|g| g == f)) {
        return Some(format!("has flags {flags:?}, expected {want_flags:?}"));
    }
    None
}

/// Builds the transaction that makes the table exactly `rs`, given what exists now.
pub fn transaction(rs: &Ruleset, existing: &Existing) -> Nftables<'static> {
    let mut cmds: Vec<NfObject<'static>> = Vec::new();
    let add = |o| NfObject::CmdObject(NfCmd::Add(o));
    cmds.push(add(NfListObject::Table(table_obj())));
    cmds.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Table(
        table_obj(),
    ))));
    let wanted_chains: BTreeSet<&str> = rs.chains.iter().map(|c| c.name.as_str()).collect();
    for stale in existing
        .chains
        .iter()
        .filter(|c| !wanted_chains.contains(c.as_str()))
    {
        cmds.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Chain(
            schema::Chain {
                family: NfFamily::INet,
                table: Cow::Borrowed(TABLE),
                name: Cow::Owned(stale.clone()),
                ..Default::default()
            },
        ))));
    }
    for c in &rs.chains {
        cmds.push(add(NfListObject::Chain(chain_obj(c))));
    }
    let wanted_sets: BTreeSet<&str> = rs.sets.iter().map(|s| s.name.as_str()).collect();
    for stale in existing
        .sets
        .iter()
        .filter(|s| !wanted_sets.contains(s.as_str()) || existing.reshaped.contains(*s))
    {
        cmds.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Set(
            Box::new(schema::Set {
                name: Cow::Owned(stale.clone()),
                ..set_obj(&SetDef {
                    name: String::new(),
                    kind: SetKind::Ports,
                    elems: vec![],
                })
            }),
        ))));
    }
    for d in &rs.sets {
        cmds.push(add(NfListObject::Set(Box::new(set_obj(d)))));
        if !d.kind.is_dynamic() {
            cmds.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(
                Box::new(set_obj(d)),
            ))));
            if !d.elems.is_empty() {
                cmds.push(add(NfListObject::Element(schema::Element {
                    family: NfFamily::INet,
                    table: Cow::Borrowed(TABLE),
                    name: Cow::Owned(d.name.clone()),
                    elem: Cow::Owned(d.elems.iter().map(elem_expr).collect()),
                })));
            }
        }
    }
    for c in &rs.chains {
        for r in &c.rules {
            cmds.push(add(rule_obj(&c.name, r)));
        }
    }
    Nftables {
        objects: Cow::Owned(cmds),
    }
}

/// A fresh, self-contained ruleset document (`nft -j -f` of it creates the table from
/// nothing); used by `callgate render firewall` and as the benchmark's anchor input.
pub fn document(rs: &Ruleset) -> Nftables<'static> {
    transaction(rs, &Existing::default())
}

/// Runs the `nft` binary (in the caller's network namespace). Holds its path so tests and
/// the lab can point elsewhere.
#[derive(Debug, Clone)]
pub struct Nft {
    pub program: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: PathBuf::from("nft"),
        }
    }
}

impl Nft {
    /// Applies a JSON document in one transaction. nft's own error text is returned on
    /// failure (the `nftables` crate's helper leaves it empty).
    pub fn apply(&self, doc: &Nftables<'_>) -> Result<(), FirewallError> {
        let json = serde_json::to_vec(doc).map_err(|e| FirewallError::Encode(e.to_string()))?;
        self.run(&["-j", "-f", "-"], Some(&json)).map(|_| ())
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, FirewallError> {
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FirewallError::Spawn {
                program: self.program.display().to_string(),
                source: e,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means nft exited early; its stderr below says why.
            let _ = pipe.write_all(input);
        }
        let out = child.wait_with_output().map_err(|e| FirewallError::Spawn {
            program: self.program.display().to_string(),
            source: e,
        })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(FirewallError::Nft {
                args: args.join(" "),
                status: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Lists our table, as nft's JSON objects; `None` when the table does not exist.
    /// `terse` omits set contents.
    pub fn list_table(&self, terse: bool) -> Result<Option<Vec<Value>>, FirewallError> {
        let mut args = vec!["-j"];
        if terse {
            args.push("-t");
        }
        args.extend(["list", "table", "inet", TABLE]);
        match self.run(&args, None) {
            Ok(out) => {
                let v: Value = serde_json::from_slice(&out).map_err(|e| {
                    FirewallError::Readback(format!("nft printed invalid JSON: {e}"))
                })?;
                let objs = v
                    .get("nftables")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                Ok(Some(objs))
            }
            Err(FirewallError::Nft { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// What the kernel holds, reduced to what we verify.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// chain name → (hook, policy)
    pub chains: BTreeMap<String, (Option<String>, Option<String>)>,
    /// chain name → rules in order
    pub rules: BTreeMap<String, Vec<ObservedRule>>,
    /// set name → (type words, flags)
    pub sets: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// set name → covered intervals (only filled for sets listed with contents)
    pub elems: BTreeMap<String, Vec<(u128, u128)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRule {
    pub comment: String,
    /// `accept`, `drop`, `jump NAME`, `goto NAME`, `return`, `continue`; "" for none.
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
    /// What the rule matches ([`mod@matches`]).
    pub matches: Matches,
}

/// Parses `nft -j list table` output.
pub fn observe(objs: &[Value]) -> Observed {
    let mut o = Observed::default();
    for obj in objs {
        if let Some(c) = obj.get("chain") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let hook = c.get("hook").and_then(Value::as_str).map(str::to_owned);
            let policy = c.get("policy").and_then(Value::as_str).map(str::to_owned);
            o.chains.insert(name.to_owned(), (hook, policy));
            o.rules.entry(name.to_owned()).or_default();
        } else if let Some(r) = obj.get("rule") {
            let chain = r.get("chain").and_then(Value::as_str).unwrap_or_default();
            let comment = r.get("comment").and_then(Value::as_str).unwrap_or_default();
            let stmts = r
                .get("expr")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut rule = ObservedRule {
                comment: comment.to_owned(),
                verdict: String::new(),
                packets: 0,
                bytes: 0,
                matches: matches::from_json(stmts),
            };
            for st in stmts {
                if let Some(cnt) = st.get("counter") {
                    rule.packets = cnt.get("packets").and_then(Value::as_u64).unwrap_or(0);
                    rule.bytes = cnt.get("bytes").and_then(Value::as_u64).unwrap_or(0);
                }
                for v in ["accept", "drop", "return", "continue"] {
                    if st.get(v).is_some() {
                        rule.verdict = v.into();
                    }
                }
                for v in ["jump", "goto"] {
                    if let Some(j) = st.get(v) {
                        let t = j.get("target").and_then(Value::as_str).unwrap_or_default();
                        rule.verdict = format!("{v} {t}");
                    }
                }
            }
            o.rules.entry(chain.to_owned()).or_default().push(rule);
        } else if let Some(st) = obj.get("set") {
            let name = st.get("name").and_then(Value::as_str).unwrap_or_default();
            let ty = match st.get("type") {
                Some(Value::String(t)) => vec![t.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => vec![],
            };
            let mut flags: Vec<String> = st
                .get("flags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            flags.sort();
            o.sets.insert(name.to_owned(), (ty, flags));
            if let Some(elems) = st.get("elem").and_then(Value::as_array) {
                let ivs = elems.iter().filter_map(value_interval).collect();
                o.elems.insert(name.to_owned(), merge(ivs));
            } else if !o.elems.contains_key(name) {
                o.elems.insert(name.to_owned(), Vec::new());
            }
        }
    }
    o
}

fn addr_num(s: &str) -> Option<(u128, u8)> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Some((u128::from(u32::from(a)), 32)),
        IpAddr::V6(a) => Some((u128::from(a), 128)),
    }
}

fn value_interval(v: &Value) -> Option<(u128, u128)> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| (u128::from(x), u128::from(x))),
        Value::String(s) => addr_num(s).map(|(a, _)| (a, a)),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let (a, bits) = addr_num(p.get("addr")?.as_str()?)?;
                let len = u32::try_from(p.get("len")?.as_u64()?).ok()?;
                let host_bits = u32::from(bits).checked_sub(len)?;
                let span = if host_bits >= 128 {
                    u128::MAX
                } else {
                    (1u128 << host_bits) - 1
                };
                Some((a, a.saturating_add(span)))
            } else if let Some(Value::Array(r)) = o.get("range") {
                let lo = value_interval(r.first()?)?.0;
                let hi = value_interval(r.get(1)?)?.1;
                Some((lo, hi))
            } else if let Some(e) = o.get("elem") {
                value_interval(e.get("val")?)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Sorts and merges overlapping or adjacent intervals.
pub fn merge(mut ivs: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ivs.sort();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ivs.len());
    for (lo, hi) in ivs {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Covered intervals of a config-owned set, as the kernel would report them.
pub fn intended_intervals(d: &SetDef) -> Vec<(u128, u128)> {
    merge(
        d.elems
            .iter()
            .map(|e| match e {
                Elem::Net(n) => {
                    let (lo, bits) = match n.network() {
                        IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
                        IpAddr::V6(a) => (u128::from(a), 128u32),
                    };
                    let host = bits - u32::from(n.prefix_len());
                    let span = if host >= 128 {
                        u128::MAX
                    } else {
                        (1u128 << host) - 1
                    };
                    (lo, lo.saturating_add(span))
                }
                Elem::Ports(p) => (u128::from(p.lo), u128::from(p.hi)),
            })
            .collect(),
    )
}

/// How the rules of chain `chain` differ from the intended ones: in number, or rule by rule
/// (comment, verdict, matches). Every difference names the chain, the rule's position and
/// its intended comment.
fn rule_diffs(chain: &str, want: &[RuleDef], got: &[ObservedRule]) -> Vec<String> {
    if got.len() != want.len() {
        let first = want
            .iter()
            .zip(got)
            .position(|(w, g)| w.comment != g.comment)
            .unwrap_or(want.len().min(got.len()));
        return vec![format!(
            "chain {chain} rules differ: kernel has {} rules, expected {} (first difference at \
             rule {})",
            got.len(),
            want.len(),
            first + 1
        )];
    }
    let mut d = Vec::new();
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let at = format!("chain {chain}, rule {} \"{}\"", i + 1, w.comment);
        if g.comment != w.comment {
            d.push(format!("{at}: comment is \"{}\"", g.comment));
        }
        let verdict = w.verdict.to_string();
        if g.verdict != verdict {
            d.push(format!(
                "{at}: verdict is \"{}\", expected \"{verdict}\"",
                g.verdict
            ));
        }
        if let Some(how) = matches::difference(&matches::intended(&w.conds), &g.matches) {
            d.push(format!("{at}: matches differ: {how}"));
        }
    }
    d
}

/// Compares the kernel's table with the intended ruleset; returns every difference.
/// Rules are compared by position: comment, verdict and what each matches
/// ([`mod@matches`]). Set contents are compared for the sets present in `observed.elems`.
pub fn diff(rs: &Ruleset, observed: &Observed) -> Vec<String> {
    let mut d = Vec::new();
    let want_chains: BTreeSet<&str> = rs.chains.iter().map(|c| c.name.as_str()).collect();
    for name in observed.chains.keys() {
        if !want_chains.contains(name.as_str()) {
            d.push(format!("unexpected chain {name}"));
        }
    }
    for c in &rs.chains {
        let Some((hook, policy)) = observed.chains.get(&c.name) else {
            d.push(format!("chain {} is missing", c.name));
            continue;
        };
        let want_hook = c.hook.map(|h| h.as_str().to_owned());
        if *hook != want_hook {
            d.push(format!(
                "chain {} hooks {:?}, expected {:?}",
                c.name, hook, want_hook
            ));
        }
        if c.hook.is_some() && policy.as_deref() != Some("drop") {
            d.push(format!(
                "chain {} has policy {:?}, expected drop",
                c.name, policy
            ));
        }
        let got = observed
            .rules
            .get(&c.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        d.extend(rule_diffs(&c.name, &c.rules, got));
    }
    let want_sets: BTreeSet<&str> = rs.sets.iter().map(|s| s.name.as_str()).collect();
    for name in observed.sets.keys() {
        if !want_sets.contains(name.as_str()) {
            d.push(format!("unexpected set {name}"));
        }
    }
    for set in &rs.sets {
        let Some((ty, flags)) = observed.sets.get(&set.name) else {
            d.push(format!("set {} is missing", set.name));
            continue;
        };
        if let Some(how) = shape_differs(set.kind, ty, flags) {
            d.push(format!("set {} {how}", set.name));
        }
        if set.kind.is_dynamic() {
            continue;
        }
        if let Some(got) = observed.elems.get(&set.name) {
            let want = intended_intervals(set);
            if *got != want {
                d.push(format!(
                    "set {} holds {} intervals, expected {}",
                    set.name,
                    got.len(),
                    want.len()
                ));
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs() -> Ruleset {
        Ruleset {
            sets: vec![],
            chains: vec![ChainDef {
                name: "input".into(),
                hook: Some(Hook::Input),
                rules: vec![
                    RuleDef {
                        comment: "carrier-sip-udp".into(),
                        conds: vec![
                            Cond::Iifname(vec!["wan0".into()]),
                            Cond::SaddrIn {
                                v6: false,
                                set: "a_s4".into(),
                            },
                            Cond::L4Proto(vec!["udp"]),
                            Cond::DportIn("a_p".into()),
                        ],
                        verdict: Verdict::Accept,
                    },
                    RuleDef {
                        comment: "default-drop".into(),
                        conds: vec![],
                        verdict: Verdict::Drop,
                    },
                ],
            }],
        }
    }

    /// What the kernel would hold for `rs()`, as read back.
    fn observed(rs: &Ruleset) -> Observed {
        let mut o = Observed::default();
        o.chains
            .insert("input".into(), (Some("input".into()), Some("drop".into())));
        o.rules.insert(
            "input".into(),
            rs.chains[0]
                .rules
                .iter()
                .map(|r| ObservedRule {
                    comment: r.comment.clone(),
                    verdict: r.verdict.to_string(),
                    packets: 0,
                    bytes: 0,
                    matches: matches::intended(&r.conds),
                })
                .collect(),
        );
        o
    }

    #[test]
    fn a_rule_that_lost_a_match_is_drift() {
        let rs = rs();
        let mut o = observed(&rs);
        assert_eq!(diff(&rs, &o), Vec::<String>::new());

        // `nft replace rule` without `ip saddr @a_s4`: same comment, same verdict
        let rule = &mut o.rules.get_mut("input").unwrap()[0];
        rule.matches = matches::intended(&[
            Cond::Iifname(vec!["wan0".into()]),
            Cond::L4Proto(vec!["udp"]),
            Cond::DportIn("a_p".into()),
        ]);
        assert_eq!(
            diff(&rs, &o),
            [
                "chain input, rule 1 \"carrier-sip-udp\": matches differ: missing \
              `ip saddr @a_s4`, `meta nfproto ipv4`"
            ]
        );

        // a verdict and a comment of another rule differ too
        let rule = &mut o.rules.get_mut("input").unwrap()[1];
        rule.verdict = "accept".into();
        rule.comment = "x".into();
        assert_eq!(
            diff(&rs, &o)[1..],
            [
                "chain input, rule 2 \"default-drop\": comment is \"x\"",
                "chain input, rule 2 \"default-drop\": verdict is \"accept\", expected \"drop\""
            ]
        );

        // a rule too many
        let mut o = observed(&rs);
        let extra = o.rules["input"][0].clone();
        o.rules.get_mut("input").unwrap().insert(0, extra);
        assert_eq!(
            diff(&rs, &o),
            ["chain input rules differ: kernel has 3 rules, expected 2 (first difference at rule 2)"]
        );
    }
}
