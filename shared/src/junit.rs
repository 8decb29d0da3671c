//! JUnit XML reports of `exec` batches: which items failed and how long they took, a batch's
//! reruns folded into its report (Maven Surefire's `<flakyFailure>`/`<rerunFailure>`), and the
//! batches' reports merged into one document: every `<testcase>` once, under one
//! `<testsuite>`, with the counts recomputed. Reports are read with a real XML parser; one that
//! is not well-formed is an error naming its batch.

use std::collections::HashMap;
use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Children of a `<testcase>` that record a failed run, as Maven Surefire names them.
const RUN_FAILURES: [&str; 6] = [
    "failure",
    "error",
    "rerunFailure",
    "rerunError",
    "flakyFailure",
    "flakyError",
];

/// One `<testcase>` element as written, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Case {
    /// The element's text, as written.
    text: String,
    /// Its qualified name (`testcase`, or with a prefix).
    tag: String,
    classname: Option<String>,
    name: Option<String>,
    file: Option<String>,
    /// Its `time`, in milliseconds.
    ms: Option<u64>,
    failed: bool,
    errored: bool,
    skipped: bool,
    /// Its direct children that record a failed run: local name and span in `text`.
    runs: Vec<(String, Range<usize>)>,
}

impl Case {
    fn new(e: &BytesStart) -> Self {
        let attr = |name: &str| -> Option<String> {
            e.try_get_attribute(name).ok().flatten().and_then(|a| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .ok()
                    .map(|v| v.into_owned())
            })
        };
        Self {
            tag: e.name().as_ref().to_owned(),
            classname: attr("classname"),
            name: attr("name"),
            file: attr("file"),
            ms: attr("time")
                .and_then(|t| t.parse::<f64>().ok())
                .map(|s| (s.max(0.0) * 1000.0).round() as u64),
            ..Self::default()
        }
    }

    /// The test's identity across runs.
    fn id(&self) -> (&str, &str) {
        (
            self.classname.as_deref().unwrap_or(""),
            self.name.as_deref().unwrap_or(""),
        )
    }

    /// True when its last run failed or errored.
    fn bad(&self) -> bool {
        self.failed || self.errored
    }

    /// Notes a child element `name` that starts directly inside it.
    fn mark(&mut self, name: &str) {
        match name {
            "failure" => self.failed = true,
            "error" => self.errored = true,
            "skipped" => self.skipped = true,
            _ => {}
        }
    }

    /// Its failed runs' elements, renamed by `rename` (`failure` → `flakyFailure`, say).
    fn runs_as(&self, rename: impl Fn(&str) -> &'static str) -> Vec<String> {
        self.runs
            .iter()
            .map(|(name, span)| {
                let text = &self.text[span.clone()];
                let to = rename(name);
                // `<name` … and, unless it is empty, … `</name>`; a prefix stays where it is.
                let qname_end = text[1..]
                    .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                    .map_or(text.len(), |i| i + 1);
                let qname = &text[1..qname_end];
                let prefix = &qname[..qname.len() - name.len()];
                let mut out = format!("<{prefix}{to}{}", &text[qname_end..]);
                let close = format!("</{qname}>");
                if out.ends_with(&close) {
                    out.truncate(out.len() - close.len());
                    out.push_str(&format!("</{prefix}{to}>"));
                }
                out
            })
            .collect()
    }

    /// Its text with `children` added at its end.
    fn with(&self, children: &[String]) -> String {
        if children.is_empty() {
            return self.text.clone();
        }
        let extra: String = children.concat();
        match self.text.strip_suffix("/>") {
            Some(open) => format!("{open}>{extra}</{}>", self.tag),
            None => {
                let at = self.text.rfind("</").unwrap_or(self.text.len());
                format!("{}{extra}{}", &self.text[..at], &self.text[at..])
            }
        }
    }
}

/// The `<testcase>` elements of `xml`, in order.
fn testcases(xml: &str) -> Result<Vec<Case>, String> {
    let mut reader = Reader::from_str(xml);
    let mut cases = Vec::new();
    // The open testcase: where it starts, its nesting depth, the failed run open in it.
    let mut open: Option<(usize, usize, Case)> = None;
    let mut run_open: Option<(String, usize)> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| format!("not well-formed XML at byte {before}: {e}"))?;
        let after = reader.buffer_position() as usize;
        let (e, empty) = match event {
            Event::Eof if open.is_some() => {
                return Err("the document ends inside a <testcase>".into())
            }
            Event::Eof => break,
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                if let Some((start, depth, case)) = open.as_mut() {
                    if *depth == 0 {
                        let mut case = std::mem::take(case);
                        case.text = xml[*start..after].to_owned();
                        cases.push(case);
                        open = None;
                    } else {
                        *depth -= 1;
                        if *depth == 0 {
                            if let Some((name, from)) = run_open.take() {
                                case.runs.push((name, from..after - *start));
                            }
                        }
                    }
                }
                continue;
            }
            _ => continue,
        };
        let name = e.local_name();
        let name: &str = name.as_ref();
        match open.as_mut() {
            // A child of the open testcase: a direct one may record how a run ended.
            Some((start, depth, case)) => {
                if *depth == 0 {
                    case.mark(name);
                    if RUN_FAILURES.contains(&name) {
                        let from = before - *start;
                        match empty {
                            true => case.runs.push((name.to_owned(), from..after - *start)),
                            false => run_open = Some((name.to_owned(), from)),
                        }
                    }
                }
                if !empty {
                    *depth += 1;
                }
            }
            None if name == "testcase" => {
                let mut case = Case::new(&e);
                if empty {
                    case.text = xml[before..after].to_owned();
                    cases.push(case);
                } else {
                    open = Some((before, 0, case));
                }
            }
            None => {}
        }
    }
    Ok(cases)
}

/// How an item's testcases went in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemRun {
    /// The sum of its testcases' times, in milliseconds.
    pub ms: u64,
    /// True when one of its testcases failed or errored.
    pub failed: bool,
}

/// How each of `items` went by the testcases of `xml` (a JUnit report). A testcase belongs to
/// the item its `file` attribute names; else the item its `classname` names as a path
/// (`tests.test_a` for `tests/test_a.py`, or the item itself); else the item its `name` is;
/// else the item that is its test id (`tests/test_a.py::TestX::test_m` for the classname
/// `tests.test_a.TestX` and the name `test_m`, as pytest writes them). Items no testcase names
/// are left out; `None` when the report cannot be read.
pub fn item_runs(xml: &str, items: &[String]) -> Option<HashMap<String, ItemRun>> {
    let by_key: HashMap<String, &String> = items
        .iter()
        .flat_map(|item| {
            let dotted = item
                .replace(".py::", "::")
                .trim_end_matches(".py")
                .replace(['/', '\\'], ".")
                .replace("::", ".");
            [(item.clone(), item), (dotted, item)]
        })
        .collect();
    let mut runs: HashMap<String, ItemRun> = HashMap::new();
    for case in testcases(xml).ok()? {
        let test_id = match (&case.classname, &case.name) {
            (Some(class), Some(name)) => Some(format!("{class}.{name}")),
            _ => None,
        };
        let item = [&case.file, &case.classname, &case.name, &test_id]
            .into_iter()
            .flatten()
            .find_map(|key| by_key.get(key).copied());
        let Some(item) = item else {
            continue;
        };
        let run = runs.entry(item.clone()).or_default();
        run.ms += case.ms.unwrap_or(0);
        run.failed |= case.bad();
    }
    Some(runs)
}

/// A batch's report after a rerun of some of its tests: `later`'s testcases replace those of
/// `earlier` with the same class and name. A test that failed before and passed in the rerun
/// keeps its earlier failures as `<flakyFailure>`/`<flakyError>`; one that failed again keeps
/// its first failure and gets the rerun's as `<rerunFailure>`/`<rerunError>`, as Maven
/// Surefire writes them.
pub fn after_rerun(earlier: &str, later: &str) -> Result<String, String> {
    let earlier = testcases(earlier).map_err(|e| format!("the first run's report: {e}"))?;
    let later = testcases(later).map_err(|e| format!("the rerun's report: {e}"))?;
    let mut rerun: HashMap<(&str, &str), &Case> = later.iter().map(|c| (c.id(), c)).collect();
    let mut out = String::from("<testsuite>\n");
    for before in &earlier {
        let text = match rerun.remove(&before.id()) {
            None => before.text.clone(),
            Some(after) if !before.bad() => after.text.clone(),
            Some(after) if after.bad() => before.with(&after.runs_as(|name| match name {
                "failure" | "rerunFailure" => "rerunFailure",
                "error" | "rerunError" => "rerunError",
                "flakyFailure" => "flakyFailure",
                _ => "flakyError",
            })),
            Some(after) => after.with(&before.runs_as(|name| match name {
                "failure" | "rerunFailure" | "flakyFailure" => "flakyFailure",
                _ => "flakyError",
            })),
        };
        out.push_str(&text);
        out.push('\n');
    }
    for case in later.iter().filter(|c| rerun.contains_key(&c.id())) {
        out.push_str(&case.text);
        out.push('\n');
    }
    out.push_str("</testsuite>\n");
    Ok(out)
}

/// One document holding every testcase of `reports` (each a batch's JUnit XML, `None` for a
/// batch that wrote none) once, in batch order.
pub fn merge(reports: &[Option<&str>]) -> Result<String, String> {
    let mut cases = Vec::new();
    for (batch, report) in reports.iter().enumerate() {
        if let Some(xml) = report {
            cases.extend(testcases(xml).map_err(|e| format!("batch {batch}'s JUnit report: {e}"))?);
        }
    }
    let count = |f: fn(&Case) -> bool| cases.iter().filter(|c| f(c)).count();
    let (failures, errors, skipped) = (
        count(|c| c.failed),
        count(|c| c.errored),
        count(|c| c.skipped),
    );
    let counts = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\"",
        cases.len()
    );
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites {counts}>\n<testsuite name=\"muster\" {counts}>\n"
    );
    for case in &cases {
        out.push_str(&case.text);
        out.push('\n');
    }
    out.push_str("</testsuite>\n</testsuites>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testcases_are_summed_per_item_by_file_classname_or_name() {
        let items: Vec<String> = ["tests/test_a.py", "tests/test_b.py", "solo", "unseen"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let xml = r#"<testsuite>
            <testcase file="tests/test_a.py" classname="x" name="one" time="0.25"/>
            <testcase classname="tests.test_a" name="two" time="0.5"/>
            <testcase classname="tests.test_b" name="three" time="1"><failure/></testcase>
            <testcase classname="other" name="solo" time="0.002"/>
            <testcase classname="nobody" name="nothing" time="9"/>
            </testsuite>"#;
        let runs = item_runs(xml, &items).unwrap();
        let run = |ms, failed| Some(ItemRun { ms, failed });
        assert_eq!(runs.get("tests/test_a.py").copied(), run(750, false));
        assert_eq!(runs.get("tests/test_b.py").copied(), run(1000, true));
        assert_eq!(runs.get("solo").copied(), run(2, false));
        assert_eq!(runs.get("unseen"), None);
        assert_eq!(item_runs("<testsuite><testcase></testsuite>", &items), None);
        // pytest's test ids as items.
        let ids: Vec<String> = [
            "tests/test_c.py::TestX::test_m[1]",
            "tests/test_c.py::test_f",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let xml = r#"<testsuite>
            <testcase classname="tests.test_c.TestX" name="test_m[1]" time="0.5"/>
            <testcase classname="tests.test_c" name="test_f" time="0.25"><error/></testcase>
            </testsuite>"#;
        let runs = item_runs(xml, &ids).unwrap();
        assert_eq!(runs.get(&ids[0]).copied(), run(500, false));
        assert_eq!(runs.get(&ids[1]).copied(), run(250, true));
    }

    #[test]
    fn a_rerun_marks_flaky_tests_and_repeated_failures_as_surefire_does() {
        let first = r#"<testsuite>
            <testcase classname="t" name="steady" time="1"/>
            <testcase classname="t" name="flaky"><failure message="once">trace 1</failure><system-out>x</system-out></testcase>
            <testcase classname="t" name="broken"><error message="boom"/></testcase>
            </testsuite>"#;
        let rerun = r#"<testsuite>
            <testcase classname="t" name="flaky" time="2"/>
            <testcase classname="t" name="broken"><error message="boom again">trace 2</error></testcase>
            </testsuite>"#;
        let merged = after_rerun(first, rerun).unwrap();
        let cases = testcases(&merged).unwrap();
        assert_eq!(cases.len(), 3, "{merged}");
        assert!(!cases[0].bad() && cases[0].runs.is_empty());
        assert_eq!(
            cases[1].text,
            r#"<testcase classname="t" name="flaky" time="2"><flakyFailure message="once">trace 1</flakyFailure></testcase>"#
        );
        assert!(!cases[1].bad());
        assert_eq!(
            cases[2].text,
            r#"<testcase classname="t" name="broken"><error message="boom"/><rerunError message="boom again">trace 2</rerunError></testcase>"#
        );
        assert!(cases[2].errored);
        // A third run that passes turns every earlier failure into a flaky one.
        let third = r#"<testsuite><testcase classname="t" name="broken"/></testsuite>"#;
        let merged = after_rerun(&merged, third).unwrap();
        let broken = &testcases(&merged).unwrap()[2];
        assert_eq!(
            broken.text,
            r#"<testcase classname="t" name="broken"><flakyError message="boom"/><flakyError message="boom again">trace 2</flakyError></testcase>"#
        );
        assert!(after_rerun(first, "<testsuite><testcase>").is_err());
    }

    #[test]
    fn testcases_of_every_batch_are_kept_once_with_counts_recomputed() {
        let a = r#"<?xml version="1.0"?><testsuites><testsuite name="a" tests="2">
            <testcase classname="t.a" name="one" time="0.1"/>
            <testcase classname="t.a" name="two"><failure message="x &lt; y">boom</failure></testcase>
            </testsuite></testsuites>"#;
        let b = r#"<testsuite><testcase name="three"><skipped/></testcase><testcase name="four"><system-out><![CDATA[<not xml>]]></system-out></testcase></testsuite>"#;
        let merged = merge(&[Some(a), None, Some(b)]).unwrap();
        let cases = testcases(&merged).unwrap();
        let names: Vec<bool> = cases.iter().map(|c| c.failed).collect();
        assert_eq!(names, [false, true, false, false]);
        assert!(
            merged.contains(r#"tests="4" failures="1" errors="0" skipped="1""#),
            "{merged}"
        );
        assert!(merged.contains("x &lt; y"), "{merged}");
        let broken = merge(&[Some("<testsuite><testcase name=\"a\"></testsuite>")]);
        assert!(broken.unwrap_err().contains("batch 0"));
    }
}
