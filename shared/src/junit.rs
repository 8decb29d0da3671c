//! Merging the JUnit XML reports of an `exec` job's batches into one document: every
//! `<testcase>` of every batch once, as the batch wrote it, under one `<testsuite>`, with the
//! counts recomputed. Reports are read with a real XML parser; one that is not well-formed is an
//! error naming its batch.

use quick_xml::events::Event;
use quick_xml::Reader;

/// One `<testcase>` element as written, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Case {
    text: String,
    failed: bool,
    errored: bool,
    skipped: bool,
}

/// The `<testcase>` elements of `xml`, in order.
fn testcases(xml: &str) -> Result<Vec<Case>, String> {
    let mut reader = Reader::from_str(xml);
    let mut cases = Vec::new();
    // The open testcase: where it starts, its nesting depth, how it ended so far.
    let mut open: Option<(usize, usize, Case)> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| format!("not well-formed XML at byte {before}: {e}"))?;
        let after = reader.buffer_position() as usize;
        let mark = |case: &mut Case, name: &str| match name {
            "failure" => case.failed = true,
            "error" => case.errored = true,
            "skipped" => case.skipped = true,
            _ => {}
        };
        match event {
            Event::Eof => break,
            Event::Start(e) => match open.as_mut() {
                Some((_, depth, case)) => {
                    *depth += 1;
                    mark(case, e.local_name().as_ref());
                }
                None if e.local_name().as_ref() == "testcase" => {
                    let case = Case {
                        text: String::new(),
                        failed: false,
                        errored: false,
                        skipped: false,
                    };
                    open = Some((before, 0, case));
                }
                None => {}
            },
            Event::Empty(e) => match open.as_mut() {
                Some((_, _, case)) => mark(case, e.local_name().as_ref()),
                None if e.local_name().as_ref() == "testcase" => cases.push(Case {
                    text: xml[before..after].to_owned(),
                    failed: false,
                    errored: false,
                    skipped: false,
                }),
                None => {}
            },
            Event::End(_) => {
                if let Some((start, depth, case)) = open.as_mut() {
                    if *depth == 0 {
                        let mut case = case.clone();
                        case.text = xml[*start..after].to_owned();
                        cases.push(case);
                        open = None;
                    } else {
                        *depth -= 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(cases)
}

/// The time each of `items` took by the testcases of `xml` (a JUnit report), in milliseconds:
/// a testcase belongs to the item its `file` attribute names, else to the item its `classname`
/// names as a path (`tests.test_a` for `tests/test_a.py`, or the item itself), else to the item
/// its `name` is; its `time` (seconds) counts for that item. Items no testcase names are left
/// out; `None` when the report cannot be read.
pub fn item_times(xml: &str, items: &[String]) -> Option<std::collections::HashMap<String, u64>> {
    use std::collections::HashMap;
    let by_key: HashMap<String, &String> = items
        .iter()
        .flat_map(|item| {
            let path = item.trim_end_matches(".py").replace(['/', '\\'], ".");
            [(item.clone(), item), (path, item)]
        })
        .collect();
    let mut times: HashMap<String, u64> = HashMap::new();
    let mut reader = Reader::from_str(xml);
    loop {
        let event = reader.read_event().ok()?;
        let (Event::Start(e) | Event::Empty(e)) = event else {
            if matches!(event, Event::Eof) {
                break;
            }
            continue;
        };
        if e.local_name().as_ref() != "testcase" {
            continue;
        }
        let attr = |name: &str| -> Option<String> {
            e.try_get_attribute(name)
                .ok()
                .flatten()
                .map(|a| a.value.into_owned())
        };
        let item = ["file", "classname", "name"]
            .iter()
            .filter_map(|a| attr(a))
            .find_map(|key| by_key.get(&key).copied());
        let (Some(item), Some(seconds)) = (item, attr("time").and_then(|t| t.parse::<f64>().ok()))
        else {
            continue;
        };
        *times.entry(item.clone()).or_default() += (seconds.max(0.0) * 1000.0).round() as u64;
    }
    Some(times)
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
    fn testcase_times_are_summed_per_item_by_file_classname_or_name() {
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
        let times = item_times(xml, &items).unwrap();
        assert_eq!(times.get("tests/test_a.py"), Some(&750));
        assert_eq!(times.get("tests/test_b.py"), Some(&1000));
        assert_eq!(times.get("solo"), Some(&2));
        assert_eq!(times.get("unseen"), None);
        assert_eq!(
            item_times("<testsuite><testcase></testsuite>", &items),
            None
        );
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
