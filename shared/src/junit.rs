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
