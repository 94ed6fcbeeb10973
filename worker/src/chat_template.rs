//! Chat templates: a checkpoint's Jinja template rendered as transformers renders it.
//!
//! transformers renders `tokenizer.chat_template` with a Jinja2 sandbox configured with
//! `trim_blocks`, `lstrip_blocks` and the loop-controls extension, passing `messages`,
//! `add_generation_prompt` and the special-token strings (`bos_token`, `eos_token`, …), and
//! defining `raise_exception` and `strftime_now`. [`ChatTemplate`] does the same with
//! minijinja, with Python's string methods (`strip`, `startswith`, …) available through
//! minijinja-contrib's pycompat layer and `tojson` producing Python's `json.dumps` text.

use std::collections::BTreeMap;

use apscore_core::pairs::Message;
use minijinja::{Environment, Error, ErrorKind, Value, context};

const TEMPLATE_NAME: &str = "chat_template";

/// A template that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("the chat template does not compile: {0}")]
pub struct TemplateError(String);

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: BTreeMap<String, String>,
}

impl ChatTemplate {
    /// Compiles `source`; `special_tokens` maps names such as `bos_token` to their text.
    pub fn new(
        source: &str,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| TemplateError(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            special_tokens,
        })
    }

    /// Renders `messages`; the error is the template's own message (from `raise_exception`)
    /// or what went wrong while rendering.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| describe(&e))?;
        let ctx = context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            ..Value::from(minijinja::value::Serde(&self.special_tokens))
        };
        template.render(ctx).map_err(|e| describe(&e))
    }
}

/// An error as a one-line reason: the message alone for `raise_exception`, else the kind,
/// detail and template line.
fn describe(error: &Error) -> String {
    if error.kind() == ErrorKind::InvalidOperation
        && let Some(detail) = error.detail()
        && let Some(message) = detail.strip_prefix("raise_exception: ")
    {
        return message.to_string();
    }
    let mut text = error.kind().to_string();
    if let Some(detail) = error.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let Some(line) = error.line() {
        text.push_str(&format!(" (chat template line {line})"));
    }
    text
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// Python's `json.dumps(value, ensure_ascii=False)` (transformers' `tojson`), with the
/// optional `indent` argument.
fn tojson(value: Value, indent: Option<usize>) -> Result<Value, Error> {
    let json: serde_json::Value = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let text = match indent {
        None => python_json(&json),
        Some(n) => {
            let mut buf = Vec::new();
            let indent = " ".repeat(n);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
            serde::Serialize::serialize(&json, &mut ser)
                .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
            String::from_utf8(buf).unwrap_or_default()
        }
    };
    Ok(Value::from_safe_string(text))
}

/// JSON with Python's default separators (`", "` and `": "`).
fn python_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_json).collect();
            format!("[{}]", inner.join(", "))
        }
        serde_json::Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        serde_json::Value::from(k.as_str()),
                        python_json(v)
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// transformers' `strftime_now(format)`: the current UTC date and time (Llama 3.2's
/// template puts today's date in the system message). Supports %d %m %Y %y %b %B %H %M %S.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", second_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", second_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", second_of_day % 60)),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_like_transformers() {
        let t = ChatTemplate::new(CHATML, BTreeMap::new()).unwrap();
        let text = t
            .render(&[msg("system", ""), msg("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_becomes_the_reason() {
        let source = "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ bos_token + m['content'].strip() }}{% endfor %}";
        let tokens = BTreeMap::from([("bos_token".to_string(), "<s>".to_string())]);
        let t = ChatTemplate::new(source, tokens).unwrap();
        assert_eq!(t.render(&[msg("user", "  x ")], false).unwrap(), "<s>x");
        let err = t.render(&[msg("assistant", "x")], false).unwrap_err();
        assert_eq!(
            err,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        );
    }

    #[test]
    fn loop_controls_and_tojson() {
        let source = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m | tojson }}{% endfor %}";
        let t = ChatTemplate::new(source, BTreeMap::new()).unwrap();
        let text = t
            .render(&[msg("system", "s"), msg("user", "é<")], false)
            .unwrap();
        assert_eq!(text, r#"{"content": "é<", "role": "user"}"#);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }
}
