//! Configuration mode's candidate: the running config's TOML, edited by path with
//! `set` and `delete` (comments and layout kept, `toml_edit`).
//!
//! A path walks tables by key; in an array of tables (`[[allow]]`, `[[user]]`, …) the
//! next word names the entry by its `name`: `set allow wan-ssh ports 22` sets `ports` of
//! the `[[allow]]` entry named `wan-ssh` (made if there is none). A value is TOML where it
//! reads as TOML (`22`, `true`, `"a b"`, `["x", "y"]`), a string otherwise; several words,
//! or one word where the key holds a list, make a list.

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table, Value};

/// The candidate and the text it started from.
#[derive(Debug, Clone)]
pub struct Candidate {
    base: String,
    doc: DocumentMut,
}

impl Candidate {
    pub fn new(running: &str) -> Result<Candidate, String> {
        let doc = running
            .parse::<DocumentMut>()
            .map_err(|e| format!("the running config does not parse: {e}"))?;
        Ok(Candidate {
            base: running.to_owned(),
            doc,
        })
    }

    /// This candidate's base (the running config) with `other`'s content: `rollback N`
    /// loads a revision whose changes then show against the running config.
    pub fn replaced_by(self, other: Candidate) -> Candidate {
        Candidate {
            base: self.base,
            doc: other.doc,
        }
    }

    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    pub fn changed(&self) -> bool {
        self.text() != self.base
    }

    /// A unified diff from the running config to the candidate (empty: no change).
    pub fn compare(&self) -> String {
        let text = self.text();
        if text == self.base {
            return String::new();
        }
        similar::TextDiff::from_lines(&self.base, &text)
            .unified_diff()
            .context_radius(3)
            .header("running", "candidate")
            .to_string()
    }

    /// `set PATH… VALUE…`.
    pub fn set(&mut self, words: &[String]) -> Result<(), String> {
        let (path, vals) = split_path(self.doc.as_table(), words)?;
        if vals.is_empty() {
            return Err("set needs a value after the path".into());
        }
        let (key, parent) = path.split_last().ok_or("set needs a path")?;
        let table = walk(self.doc.as_table_mut(), parent, true)?;
        let was_list = table.get(key).is_some_and(|i| i.as_array().is_some());
        let v = make_value(&vals, was_list);
        table.insert(key, value(v));
        Ok(())
    }

    /// `delete PATH…`.
    pub fn delete(&mut self, words: &[String]) -> Result<(), String> {
        let (key, parent) = words.split_last().ok_or("delete needs a path")?;
        // `delete allow wan-ssh`: an entry of an array of tables.
        if let Some((arr_key, before)) = parent.split_last() {
            let is_entry = walk(self.doc.as_table_mut(), before, false).is_ok_and(|t| {
                t.get(arr_key)
                    .is_some_and(|i| i.as_array_of_tables().is_some())
            });
            let t = walk(self.doc.as_table_mut(), before, false);
            if let (true, Ok(t)) = (is_entry, t) {
                let Some(arr) = t.get_mut(arr_key).and_then(Item::as_array_of_tables_mut) else {
                    return Err(format!("{arr_key} is not a list of entries"));
                };
                let i =
                    position(arr, key).ok_or_else(|| format!("no {arr_key} entry named {key}"))?;
                arr.remove(i);
                if arr.is_empty() {
                    t.remove(arr_key);
                }
                return Ok(());
            }
        }
        let t = walk(self.doc.as_table_mut(), parent, false)?;
        t.remove(key)
            .map(|_| ())
            .ok_or_else(|| format!("nothing at {}", words.join(" ")))
    }

    /// The keys (and entry names) that may follow `words` (Tab completion of paths).
    pub fn keys_after(&self, words: &[String]) -> Vec<String> {
        let mut t: &Table = self.doc.as_table();
        let mut i = 0;
        while i < words.len() {
            match t.get(&words[i]) {
                Some(Item::Table(next)) => {
                    t = next;
                    i += 1;
                }
                Some(Item::ArrayOfTables(arr)) => {
                    let Some(name) = words.get(i + 1) else {
                        return names(arr);
                    };
                    let Some(e) = arr.iter().find(|e| entry_name(e) == Some(name.as_str())) else {
                        return Vec::new();
                    };
                    t = e;
                    i += 2;
                }
                _ => return Vec::new(),
            }
        }
        t.iter().map(|(k, _)| k.to_owned()).collect()
    }
}

/// The config's tables, by dotted path: a path word naming one that is not in the
/// candidate yet makes it.
const TABLES: &[&str] = &[
    "appliance",
    "zones",
    "zones.wan",
    "zones.private",
    "zones.mgmt",
    "zones.sync",
    "services",
    "services.ssh",
    "services.sip",
    "services.heartbeat",
    "services.ping",
    "vault",
    "sip",
    "sip.tcp",
    "sip.media",
    "pair",
    "console",
    "console.idle_timeout_secs",
];

/// The config's lists of named entries (`[[allow]]`, …), by dotted path.
const LISTS: &[&str] = &[
    "allow",
    "egress",
    "user",
    "pair.node",
    "pair.vip",
    "sip.carrier",
    "sip.route",
];

fn dotted(path: &[String], word: &str) -> String {
    let mut p: Vec<&str> = Vec::new();
    let mut i = 0;
    // Entry names are not part of a table's dotted path.
    while i < path.len() {
        p.push(&path[i]);
        let d = p.join(".");
        i += if LISTS.contains(&d.as_str()) { 2 } else { 1 };
    }
    p.push(word);
    p.join(".")
}

fn entry_name(t: &Table) -> Option<&str> {
    t.get("name").and_then(Item::as_str)
}

fn names(arr: &ArrayOfTables) -> Vec<String> {
    arr.iter()
        .filter_map(|e| entry_name(e).map(str::to_owned))
        .collect()
}

fn position(arr: &ArrayOfTables, name: &str) -> Option<usize> {
    arr.iter().position(|e| entry_name(e) == Some(name))
}

/// Where the path ends and the value begins: the path is every word that names a table,
/// an array of tables (with its entry name) and then one key.
fn split_path(root: &Table, words: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut t = Some(root);
    let mut path = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        match t.and_then(|t| t.get(w)) {
            Some(Item::Table(next)) => {
                path.push(w.clone());
                t = Some(next);
                i += 1;
            }
            Some(Item::ArrayOfTables(arr)) => {
                let name = words
                    .get(i + 1)
                    .ok_or_else(|| format!("{w} needs the name of an entry"))?;
                path.push(w.clone());
                path.push(name.clone());
                t = arr.iter().find(|e| entry_name(e) == Some(name.as_str()));
                i += 2;
            }
            None if TABLES.contains(&dotted(&path, w).as_str()) => {
                path.push(w.clone());
                t = None;
                i += 1;
            }
            None if LISTS.contains(&dotted(&path, w).as_str()) => {
                let name = words
                    .get(i + 1)
                    .ok_or_else(|| format!("{w} needs the name of an entry"))?;
                path.push(w.clone());
                path.push(name.clone());
                t = None;
                i += 2;
            }
            _ => {
                // A key (existing or new): the rest is the value.
                path.push(w.clone());
                return Ok((path, words[i + 1..].to_vec()));
            }
        }
    }
    Ok((path, Vec::new()))
}

/// The table at `path` (tables by key, entries of arrays of tables by name), made on the
/// way when `create`.
fn walk<'a>(root: &'a mut Table, path: &[String], create: bool) -> Result<&'a mut Table, String> {
    let mut t = root;
    let mut i = 0;
    while i < path.len() {
        let key = path[i].as_str();
        let is_array = t
            .get(key)
            .is_some_and(|it| it.as_array_of_tables().is_some());
        if is_array {
            let name = path
                .get(i + 1)
                .ok_or_else(|| format!("{key} needs the name of an entry"))?
                .clone();
            let Some(arr) = t.get_mut(key).and_then(Item::as_array_of_tables_mut) else {
                return Err(format!("{key} is not a list of entries"));
            };
            let idx = match position(arr, &name) {
                Some(p) => p,
                None if create => {
                    let mut e = Table::new();
                    e.insert("name", value(name.clone()));
                    arr.push(e);
                    arr.len() - 1
                }
                None => return Err(format!("no {key} entry named {name}")),
            };
            t = arr
                .get_mut(idx)
                .ok_or_else(|| format!("no {key} entry named {name}"))?;
            i += 2;
            continue;
        }
        if t.get(key).is_none() {
            if !create {
                return Err(format!("nothing at {}", path[..=i].join(" ")));
            }
            if LISTS.contains(&dotted(&path[..i], key).as_str()) {
                t.insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
                continue; // made: the array branch above takes it from here
            }
            // Made on the way: its header appears only if it holds values itself.
            let mut made = Table::new();
            made.set_implicit(true);
            t.insert(key, Item::Table(made));
        }
        t = t
            .get_mut(key)
            .and_then(Item::as_table_mut)
            .ok_or_else(|| format!("{key} is a value, not a table"))?;
        i += 1;
    }
    Ok(t)
}

fn one(word: &str) -> Value {
    // TOML where it reads as TOML (numbers, booleans, quoted strings, lists), else a string.
    match word.parse::<Value>() {
        Ok(v) if !matches!(v, Value::Datetime(_)) => v,
        _ => Value::from(word),
    }
}

fn make_value(words: &[String], list: bool) -> Value {
    if words.len() == 1 {
        let v = one(&words[0]);
        if !list || v.as_array().is_some() {
            return v;
        }
    }
    let mut a = Array::new();
    for w in words {
        a.push(one(w));
    }
    Value::Array(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# lab\n[appliance]\nname = \"lab-a\" # this one\n\n[[allow]]\nname = \"wan-traceroute\"\nzone = \"wan\"\nports = [\"33434-33534\"]\n\n[[allow]]\nname = \"mgmt-api\"\nzone = \"mgmt\"\n";

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn set_and_delete_by_path_keep_the_rest_of_the_text() {
        let mut c = Candidate::new(TEXT).unwrap();
        assert!(!c.changed() && c.compare().is_empty());
        c.set(&w("allow wan-traceroute ports 33434-33500")).unwrap();
        let t = c.text();
        assert!(t.contains("ports = [\"33434-33500\"]"), "{t}");
        assert!(t.contains("# lab") && t.contains("# this one"), "{t}");
        let d = c.compare();
        assert!(
            d.contains("-ports = [\"33434-33534\"]") && d.contains("+ports = [\"33434-33500\"]"),
            "{d}"
        );
        // a new entry, a number, a boolean, a list
        c.set(&w("allow wan-ssh zone wan")).unwrap();
        c.set(&w("allow wan-ssh ports 22 2222")).unwrap();
        c.set(&w("console idle_timeout_secs operator 600")).unwrap();
        c.set(&w("user ann role admin")).unwrap();
        let t = c.text();
        assert!(
            t.contains("[[user]]\nname = \"ann\"\nrole = \"admin\""),
            "{t}"
        );
        assert!(
            t.contains("name = \"wan-ssh\"") && t.contains("ports = [22, 2222]"),
            "{t}"
        );
        assert!(t.contains("operator = 600"), "{t}");
        c.delete(&w("allow mgmt-api")).unwrap();
        assert!(!c.text().contains("mgmt-api"));
        c.delete(&w("allow wan-ssh ports")).unwrap();
        assert!(!c.text().contains("2222"));
        assert!(c.delete(&w("allow nothing-here")).is_err());
        assert!(c.delete(&w("nothing")).is_err());
        assert!(c.set(&w("allow")).is_err());
        assert!(c.set(&w("appliance name")).is_err(), "a value is needed");
        assert!(
            c.set(&w("appliance name lab-x extra")).is_ok(),
            "a list where there was a string is the daemon's to refuse"
        );
    }

    #[test]
    fn completion_knows_the_keys_and_entry_names() {
        let c = Candidate::new(TEXT).unwrap();
        assert_eq!(c.keys_after(&[]), w("appliance allow"));
        assert_eq!(c.keys_after(&w("allow")), w("wan-traceroute mgmt-api"));
        assert_eq!(c.keys_after(&w("allow mgmt-api")), w("name zone"));
        assert!(c.keys_after(&w("allow nobody")).is_empty());
    }
}
