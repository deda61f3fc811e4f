//! JSON and JSON-lines record formats (Alpaca, Dolly, prompt/response,
//! GSM8K, OpenOrca, messages, HH-RLHF, custom keys, the `seal` schema).

use super::*;

/// Every record, converted by `format`; ids must be unique.
pub(super) fn read_records(
    ctx: &Ctx<'_>,
    format: Format,
    bytes: &[u8],
    report: &mut ReadReport,
) -> Result<()> {
    let path = ctx.path;
    // Generated ids are unique; files in the `seal` schema carry
    // their own, so duplicates are checked for every format.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for rec in records::json_records(path, bytes)? {
        let Record {
            line,
            ordinal,
            value,
        } = rec;
        let result = value
            .and_then(|v| ctx.convert(format, line, ordinal, &v))
            .and_then(|s| match seen.get(&s.id) {
                Some(first) => Err(ctx.field(
                    Some(line),
                    "id",
                    format!("duplicate id `{}` (first on line {first})", s.id),
                )),
                None => {
                    seen.insert(s.id.clone(), line);
                    Ok(Some(s))
                }
            });
        ctx.push(report, Some(line), ordinal, result)?;
    }
    Ok(())
}

impl Ctx<'_> {
    fn convert(&self, format: Format, line: usize, ordinal: usize, v: &Value) -> Result<Sample> {
        if !v.is_object() {
            return Err(self.field(
                Some(line),
                "(record)",
                format!("expected an object, found {}", kind(v)),
            ));
        }
        let label = self.opts.label;
        let turn = |user: String, response: String| {
            vec![Message::user(user), Message::assistant(response)]
        };
        match format {
            Format::Alpaca | Format::Dolly => {
                let (ctx_key, out_key) = if format == Format::Alpaca {
                    ("input", "output")
                } else {
                    ("context", "response")
                };
                let instruction =
                    self.nonempty(line, "instruction", self.str_field(line, v, "instruction")?)?;
                let context = self.opt_str_field(line, v, ctx_key)?.unwrap_or_default();
                let output = self.nonempty(line, out_key, self.str_field(line, v, out_key)?)?;
                Ok(self.sample(
                    ordinal,
                    turn(join_input(&instruction, &context), output),
                    label,
                    None,
                ))
            }
            Format::PromptResponse => {
                let p = self.nonempty(line, "prompt", self.str_field(line, v, "prompt")?)?;
                let r = self.nonempty(line, "response", self.str_field(line, v, "response")?)?;
                Ok(self.sample(ordinal, turn(p, r), label, None))
            }
            Format::Gsm8k => {
                let q = self.nonempty(line, "question", self.str_field(line, v, "question")?)?;
                let a = self.nonempty(line, "answer", self.str_field(line, v, "answer")?)?;
                let reference = gsm8k_final_answer(&a);
                if reference.is_none() {
                    return Err(self.field(Some(line), "answer", "no final answer after `####`"));
                }
                Ok(self.sample(ordinal, turn(q, a), label, reference))
            }
            Format::OpenOrca => {
                let sys = self
                    .opt_str_field(line, v, "system_prompt")?
                    .unwrap_or_default();
                let q = self.nonempty(line, "question", self.str_field(line, v, "question")?)?;
                let r = self.nonempty(line, "response", self.str_field(line, v, "response")?)?;
                let mut msgs = Vec::with_capacity(3);
                if !sys.trim().is_empty() {
                    msgs.push(Message::system(sys));
                }
                msgs.extend(turn(q, r));
                Ok(self.sample(ordinal, msgs, label, None))
            }
            Format::Messages => {
                let list = v.get("messages").and_then(Value::as_array).ok_or_else(|| {
                    self.field(Some(line), "messages", "missing, or not an array")
                })?;
                let mut msgs = Vec::with_capacity(list.len());
                for (i, m) in list.iter().enumerate() {
                    let role = match m.get("role").and_then(Value::as_str) {
                        Some("system") => Role::System,
                        Some("user") | Some("human") => Role::User,
                        Some("assistant") | Some("gpt") => Role::Assistant,
                        Some(other) => {
                            return Err(self.field(
                                Some(line),
                                &format!("messages[{i}].role"),
                                format!("unknown role `{other}`"),
                            ))
                        }
                        None => {
                            return Err(self.field(
                                Some(line),
                                &format!("messages[{i}].role"),
                                "missing",
                            ))
                        }
                    };
                    let content = m.get("content").and_then(Value::as_str).ok_or_else(|| {
                        self.field(
                            Some(line),
                            &format!("messages[{i}].content"),
                            "missing or not a string",
                        )
                    })?;
                    msgs.push(Message {
                        role,
                        content: content.to_string(),
                    });
                }
                let s = self.sample(ordinal, msgs, label, None);
                if s.response().is_none() && !self.opts.prompt_only {
                    return Err(self.field(
                        Some(line),
                        "messages",
                        "the last message is not an assistant response",
                    ));
                }
                Ok(s)
            }
            Format::HhRlhf => {
                let key = self.opts.hh_side.key();
                let t = self.str_field(line, v, key)?;
                let msgs = parse_hh_transcript(&t).map_err(|m| self.field(Some(line), key, m))?;
                Ok(self.sample(ordinal, msgs, label, None))
            }
            Format::Keys => {
                let ik = self
                    .opts
                    .input_key
                    .as_deref()
                    .ok_or_else(|| DataError::Invalid {
                        what: "options".into(),
                        message: "format `keys` needs an input key".into(),
                    })?;
                let mut user = self.nonempty(line, ik, self.str_field(line, v, ik)?)?;
                if let Some(ck) = &self.opts.context_key {
                    user = join_input(&user, &self.opt_str_field(line, v, ck)?.unwrap_or_default());
                }
                let mut msgs = Vec::with_capacity(3);
                if let Some(sk) = &self.opts.system_key {
                    if let Some(sys) = self.opt_str_field(line, v, sk)? {
                        if !sys.trim().is_empty() {
                            msgs.push(Message::system(sys));
                        }
                    }
                }
                msgs.push(Message::user(user));
                if let Some(ok) = &self.opts.output_key {
                    let out = self.nonempty(line, ok, self.str_field(line, v, ok)?)?;
                    msgs.push(Message::assistant(out));
                }
                Ok(self.sample(ordinal, msgs, label, None))
            }
            Format::Seal => {
                let s: Sample = serde_json::from_value(v.clone()).map_err(|e| DataError::Json {
                    path: self.path.to_path_buf(),
                    line: Some(line),
                    message: e.to_string(),
                })?;
                Ok(s)
            }
            Format::JailbreakBench
            | Format::AdvBench
            | Format::SafeRlhf
            | Format::HarmBench
            | Format::StrongReject
            | Format::XsTest => Err(DataError::Invalid {
                what: "format".into(),
                message: format!("{format} is not a JSON record format"),
            }),
        }
    }
}
