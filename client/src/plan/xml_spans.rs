//! Where each element and comment of an XML document sits, in bytes, so that parts of it can
//! be replaced while every other byte stays as it was. Parsing is quick-xml's.

use quick_xml::events::{BytesStart, Event};

/// An element and its byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The qualified name (`cpu`, `kvmisolate:isolate`).
    pub name: String,
    /// The attributes: qualified name, and the attribute as written again (`mode='x'`).
    pub attrs: Vec<(String, String)>,
    /// Where `<name` starts.
    pub start: usize,
    /// Just after the start tag's `>` (or `/>`).
    pub open_end: usize,
    /// Just after the end tag (equal to `open_end` for an empty element).
    pub end: usize,
    /// Whether it is written `<name/>`.
    pub empty: bool,
    /// Child elements and comments.
    pub children: Vec<Item>,
}

/// Something inside an element that the splicing keeps or replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A child element.
    Element(Element),
    /// A comment, as its byte range.
    Comment {
        /// Where `<!--` starts.
        start: usize,
        /// Just after `-->`.
        end: usize,
    },
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct SpanError {
    /// The 1-based line of the problem.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn element_of(e: &BytesStart<'_>, start: usize, text: &str) -> Result<Element, SpanError> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| SpanError {
            line: line_of(text, start),
            reason: format!("bad attribute in <{name}>: {err}"),
        })?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = String::from_utf8_lossy(&a.value).into_owned();
        let quote = if value.contains('\'') { '"' } else { '\'' };
        attrs.push((key.clone(), format!("{key}={quote}{value}{quote}")));
    }
    Ok(Element {
        name,
        attrs,
        start,
        open_end: start,
        end: start,
        empty: false,
        children: Vec::new(),
    })
}

fn pos(reader: &quick_xml::Reader<&[u8]>) -> usize {
    usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX)
}

/// The root element of `text`, with the positions of everything inside it.
pub fn parse(text: &str) -> Result<Element, SpanError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let start = pos(&reader);
        let event = reader.read_event().map_err(|e| SpanError {
            line: line_of(text, pos(&reader)),
            reason: e.to_string(),
        })?;
        let end = pos(&reader);
        let done = match event {
            Event::Start(e) => {
                let mut el = element_of(&e, start, text)?;
                el.open_end = end;
                stack.push(el);
                None
            }
            Event::Empty(e) => {
                let mut el = element_of(&e, start, text)?;
                el.open_end = end;
                el.end = end;
                el.empty = true;
                Some(el)
            }
            Event::End(_) => stack.pop().map(|mut el| {
                el.end = end;
                el
            }),
            Event::Comment(_) => {
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(Item::Comment { start, end });
                }
                None
            }
            Event::Eof => break,
            _ => None,
        };
        if let Some(el) = done {
            match stack.last_mut() {
                Some(parent) => parent.children.push(Item::Element(el)),
                None if root.is_none() => root = Some(el),
                None => {
                    return Err(SpanError {
                        line: line_of(text, start),
                        reason: "more than one root element".to_owned(),
                    });
                }
            }
        }
    }
    if let Some(open) = stack.last() {
        return Err(SpanError {
            line: line_of(text, open.start),
            reason: format!("<{}> is never closed", open.name),
        });
    }
    root.ok_or_else(|| SpanError {
        line: 1,
        reason: "no root element".to_owned(),
    })
}

impl Element {
    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|i| match i {
            Item::Element(e) => Some(e),
            Item::Comment { .. } => None,
        })
    }

    /// The value of attribute `key` as written (entities not expanded).
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, raw)| {
            let value = raw.get(key.len() + 2..raw.len().saturating_sub(1));
            value.unwrap_or("")
        })
    }
}

/// The white space between the start of the line and `pos`, if only white space is there.
pub fn indent_at(text: &str, pos: usize) -> Option<&str> {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let prefix = &text[line_start..pos];
    prefix
        .chars()
        .all(|c| c == ' ' || c == '\t')
        .then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_elements_exactly() {
        let text = "<?xml version='1.0'?>\n<domain type='kvm'>\n  <!-- c -->\n  <name>x</name>\n  <cpu mode='a'/>\n</domain>\n";
        let root = parse(text).unwrap();
        assert_eq!(root.name, "domain");
        assert_eq!(&text[root.start..root.end], text[22..].trim_end());
        let names: Vec<&str> = root.elements().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["name", "cpu"]);
        let cpu = root.elements().nth(1).unwrap();
        assert_eq!(&text[cpu.start..cpu.end], "<cpu mode='a'/>");
        assert!(cpu.empty);
        assert_eq!(cpu.attr("mode"), Some("a"));
        let Item::Comment { start, end } = root.children[0] else {
            panic!()
        };
        assert_eq!(&text[start..end], "<!-- c -->");
        assert_eq!(indent_at(text, cpu.start), Some("  "));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("<domain>\n<cpu>\n</domain>").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse("<domain>\n<cpu>\n").unwrap_err();
        assert!(e.reason.contains("never closed"), "{e}");
        assert!(parse("").is_err());
    }
}
