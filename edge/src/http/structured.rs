//! Structured output in the OpenAI API: `response_format` (`json_object`,
//! `json_schema`) and forced tool calls (`tool_choice: "required"` or a
//! named function) become a grammar the generation follows on both sides
//! of the split ([`crate::generate::grammar`]); a tool call's JSON becomes
//! the `tool_calls` answer. With `tool_choice` `auto` or `none` the tools are
//! accepted and the model answers in text. Also: log-probabilities in
//! OpenAI's two shapes (chat and completions).

use serde_json::{json, Map, Value};

use super::openai::{field, ApiError};
use crate::generate::grammar::Constraint;
use crate::generate::TokenEvent;
use offramp_common::codec::echo::quoted;
use offramp_common::decoder::DecoderTokenizer;

/// One function the client offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// Its arguments' JSON schema (any object when not given).
    pub parameters: Value,
}

/// What a request's output must be.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Output {
    #[default]
    Text,
    /// JSON that follows the constraint (`response_format`).
    Json(Constraint),
    /// A call of one of `tools` (`tool_choice` required, or the one named).
    ToolCall { tools: Vec<Tool> },
}

impl Output {
    /// Reads `response_format`, `tools` / `functions` and `tool_choice` /
    /// `function_call`.
    pub fn parse(obj: &Map<String, Value>) -> Result<Self, ApiError> {
        let format = response_format(obj)?;
        let tools = tools(obj)?;
        let forced = forced_tools(obj, &tools)?;
        match (format, forced) {
            (Some(_), Some(_)) => Err(ApiError::param(
                "response_format",
                "cannot be combined with a forced tool call (tool_choice required or named): the answer is the call",
            )),
            (Some(c), None) => Ok(Output::Json(c)),
            (None, Some(tools)) => Ok(Output::ToolCall { tools }),
            (None, None) => Ok(Output::Text),
        }
    }

    /// The grammar the generation follows, if any.
    pub fn constraint(&self) -> Option<Constraint> {
        match self {
            Output::Text => None,
            Output::Json(c) => Some(c.clone()),
            Output::ToolCall { tools } => Some(Constraint::JsonSchema(call_schema(tools))),
        }
    }

    /// What the model is told of a forced call (a system message), so
    /// that it fills the arguments sensibly; the grammar makes it a call.
    pub fn instructions(&self) -> Option<String> {
        let Output::ToolCall { tools } = self else { return None };
        let listed: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                f
            })
            .collect();
        Some(format!("Answer with a call {{\"name\": ..., \"arguments\": ...}} of one of: {}", Value::Array(listed)))
    }
}

/// `response_format`: text (nothing to follow), `json_object` or
/// `json_schema` (its `json_schema.schema`).
fn response_format(obj: &Map<String, Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(rf) = field::<Map<String, Value>>(obj, "response_format", "an object with a type")? else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .filter(|s| s.is_object() || s.is_boolean())
                .ok_or_else(|| {
                    ApiError::param("response_format.json_schema.schema", "is required: the JSON schema to follow")
                })?;
            Ok(Some(Constraint::JsonSchema(schema.clone())))
        }
        other => Err(ApiError::param(
            "response_format.type",
            &format!(
                "must be \"text\", \"json_object\" or \"json_schema\" (got {})",
                other.map_or("nothing".into(), quoted)
            ),
        )),
    }
}

/// `tools` (`{"type": "function", "function": {...}}` each) or the older
/// `functions`.
fn tools(obj: &Map<String, Value>) -> Result<Vec<Tool>, ApiError> {
    let mut out = Vec::new();
    for (key, nested) in [("tools", true), ("functions", false)] {
        let Some(list) = field::<Vec<Value>>(obj, key, "a list of functions")? else { continue };
        for (i, item) in list.iter().enumerate() {
            let f = if nested { item.get("function") } else { Some(item) };
            let name = f.and_then(|f| f.get("name")).and_then(Value::as_str).filter(|n| !n.is_empty());
            let Some(name) = name else {
                let at = if nested { format!("{key}[{i}].function.name") } else { format!("{key}[{i}].name") };
                return Err(ApiError::param(&at, "is required: the function's name"));
            };
            let f = f.expect("a name was found in it");
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => json!({"type": "object"}),
                Some(p) if p.is_object() => p.clone(),
                Some(_) => {
                    return Err(ApiError::param(&format!("{key}[{i}]"), "parameters must be a JSON schema object"))
                }
            };
            let description = f.get("description").and_then(Value::as_str).map(String::from);
            out.push(Tool { name: name.to_string(), description, parameters });
        }
    }
    Ok(out)
}

/// The tools a call is forced among: all of them (`required`), the one
/// named, or none (`auto`, `none`, absent).
fn forced_tools(obj: &Map<String, Value>, tools: &[Tool]) -> Result<Option<Vec<Tool>>, ApiError> {
    for key in ["tool_choice", "function_call"] {
        let name = match obj.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s == "none" || s == "auto" => continue,
            Some(Value::String(s)) if s == "required" => None,
            Some(v) => match v.get("function").and_then(|f| f.get("name")).or_else(|| v.get("name")) {
                Some(Value::String(n)) => Some(n.clone()),
                _ => {
                    return Err(ApiError::param(
                        key,
                        "must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ))
                }
            },
        };
        if tools.is_empty() {
            return Err(ApiError::param(key, "forces a tool call, but the request lists no tools"));
        }
        return match name {
            None => Ok(Some(tools.to_vec())),
            Some(n) => match tools.iter().find(|t| t.name == n) {
                Some(t) => Ok(Some(vec![t.clone()])),
                None => Err(ApiError::param(key, &format!("names {}, which is not among the tools", quoted(&n)))),
            },
        };
    }
    Ok(None)
}

/// Tools that are accepted without being forced: the model answers in
/// text (reported in `offramp.ignored`).
pub fn ignored_tools(obj: &Map<String, Value>) -> Vec<String> {
    let forced = ["tool_choice", "function_call"].iter().any(|k| {
        obj.get(*k).is_some_and(|v| !(v.is_null() || v.as_str() == Some("auto") || v.as_str() == Some("none")))
    });
    ["tools", "functions"]
        .into_iter()
        .filter(|k| !forced && obj.get(*k).and_then(Value::as_array).is_some_and(|a| !a.is_empty()))
        .map(String::from)
        .collect()
}

/// The JSON schema of a call of one of `tools`: `{"name", "arguments"}`.
fn call_schema(tools: &[Tool]) -> Value {
    let one = |t: &Tool| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    };
    match tools {
        [t] => one(t),
        many => json!({"anyOf": many.iter().map(one).collect::<Vec<_>>()}),
    }
}

/// A generated call as OpenAI's `tool_calls` entry, or `None` when the text
/// is not a whole call (generation cut short by `max_tokens`).
pub fn tool_call(text: &str, id: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(text).ok()?;
    let name = v.get("name")?.as_str()?;
    let arguments = v.get("arguments")?;
    Some(json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    }))
}

/// A token as a log-probability entry shows it: its text and bytes.
fn token_text(tokenizer: &DecoderTokenizer, token: u32) -> String {
    tokenizer.decode(&[token]).unwrap_or_default()
}

/// Chat: `logprobs.content` entries for `events`.
pub fn chat_logprobs(tokenizer: &DecoderTokenizer, events: &[&TokenEvent]) -> Value {
    let entry = |token: u32, logprob: f32| {
        let text = token_text(tokenizer, token);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = events
        .iter()
        .filter_map(|e| {
            let l = e.logprobs.as_ref()?;
            let mut v = entry(e.token, l.logprob);
            v["top_logprobs"] = l.top.iter().map(|&(t, lp)| entry(t, lp)).collect();
            Some(v)
        })
        .collect();
    json!({ "content": content })
}

/// Completions: the legacy `logprobs` object for `events` (text offsets
/// from `offset`).
pub fn completion_logprobs(tokenizer: &DecoderTokenizer, events: &[&TokenEvent], offset: usize) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut at = offset;
    for e in events {
        let Some(l) = &e.logprobs else { continue };
        let text = token_text(tokenizer, e.token);
        offsets.push(at);
        at += e.text.len();
        tokens.push(text);
        lps.push(l.logprob);
        let top: Map<String, Value> = l.top.iter().map(|&(t, lp)| (token_text(tokenizer, t), json!(lp))).collect();
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Output, ApiError> {
        Output::parse(v.as_object().unwrap())
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "weather", "parameters":
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn response_formats_and_tool_choices_become_what_the_output_must_be() {
        assert_eq!(parse(json!({})).unwrap(), Output::Text);
        assert_eq!(parse(json!({"response_format": {"type": "text"}})).unwrap(), Output::Text);
        assert_eq!(
            parse(json!({"response_format": {"type": "json_object"}})).unwrap(),
            Output::Json(Constraint::JsonObject)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            parse(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}))
                .unwrap(),
            Output::Json(Constraint::JsonSchema(schema))
        );
        assert_eq!(parse(json!({"tools": weather(), "tool_choice": "auto"})).unwrap(), Output::Text);
        let forced = parse(json!({"tools": weather(), "tool_choice": "required"})).unwrap();
        assert!(matches!(&forced, Output::ToolCall { tools } if tools[0].name == "weather"));
        let named = json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "weather"}}});
        assert_eq!(parse(named).unwrap(), forced);
        assert!(forced.instructions().unwrap().contains("weather"));
    }

    #[test]
    fn bad_structured_requests_are_refused_by_name() {
        let param = |v: Value| parse(v).unwrap_err().param.unwrap();
        assert_eq!(param(json!({"response_format": {"type": "xml"}})), "response_format.type");
        assert_eq!(param(json!({"response_format": {"type": "json_schema"}})), "response_format.json_schema.schema");
        assert_eq!(param(json!({"response_format": "json"})), "response_format");
        assert_eq!(param(json!({"tool_choice": "required"})), "tool_choice");
        assert_eq!(param(json!({"tools": weather(), "tool_choice": {"function": {"name": "nope"}}})), "tool_choice");
        assert_eq!(param(json!({"tools": [{"type": "function", "function": {}}]})), "tools[0].function.name");
        let both = json!({"tools": weather(), "tool_choice": "required", "response_format": {"type": "json_object"}});
        assert_eq!(param(both), "response_format");
    }

    #[test]
    fn a_generated_call_becomes_a_tool_call_entry() {
        let call = tool_call(r#"{"name": "weather", "arguments": {"city": "Oslo"}}"#, "call_1").unwrap();
        assert_eq!(call["function"]["name"], "weather");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["city"], "Oslo");
        assert!(tool_call(r#"{"name": "weather", "argu"#, "call_2").is_none(), "cut short");
    }
}
