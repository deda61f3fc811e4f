//! JailbreakBench artifacts: `{"jailbreaks": [...]}` attack records.

use super::*;

/// Every attack record; records with a null response are skipped and counted.
pub(super) fn read(ctx: &Ctx<'_>, bytes: &[u8], report: &mut ReadReport) -> Result<()> {
    let path = ctx.path;
    let text = fsutil::utf8(path, bytes)?;
    let root: Value = serde_json::from_str(text).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line: Some(e.line()),
        message: e.to_string(),
    })?;
    let list = root
        .get("jailbreaks")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ctx.field(
                None,
                "jailbreaks",
                "missing, or not an array of attack records",
            )
        })?;
    for (i, rec) in list.iter().enumerate() {
        let result = jailbreak_record(ctx, i, rec);
        if let Ok(None) = result {
            report.skipped.push(Skipped {
                line: None,
                ordinal: i,
                kind: "null response".into(),
                message: format!("{}: jailbreaks[{i}].response is null", path.display()),
            });
            continue;
        }
        ctx.push(report, None, i, result)?;
    }
    Ok(())
}

fn jailbreak_record(ctx: &Ctx<'_>, i: usize, rec: &Value) -> Result<Option<Sample>> {
    let f = |field: &str, m: &str| ctx.field(None, &format!("jailbreaks[{i}].{field}"), m);
    let goal = rec
        .get("goal")
        .and_then(Value::as_str)
        .ok_or_else(|| f("goal", "missing or not a string"))?;
    if goal.trim().is_empty() {
        return Err(f("goal", "empty"));
    }
    let response = match rec.get("response") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => return Err(f("response", "not a string")),
    };
    if response.trim().is_empty() {
        return Err(f("response", "empty response"));
    }
    let verdict = match rec.get("jailbroken") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        _ => return Err(f("jailbroken", "missing or not a boolean")),
    };
    let label = ctx
        .opts
        .label
        .unwrap_or(if verdict { Label::Harmful } else { Label::Safe });
    Ok(Some(ctx.sample(
        i,
        vec![
            Message::user(goal.trim()),
            Message::assistant(response.clone()),
        ],
        Some(label),
        None,
    )))
}
