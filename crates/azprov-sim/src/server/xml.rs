//! A small strict XML reader for request bodies: elements, attributes, character data, the five predefined entities
//! and character references, comments, CDATA and processing instructions. No DTDs. Names are matched by local name.

pub struct Element {
    /// The qualified name as written.
    pub qname: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn local(&self) -> &str {
        self.qname.rsplit(':').next().unwrap_or(&self.qname)
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn expect_name(&self, name: &str) -> Result<(), String> {
        if self.local() == name {
            Ok(())
        } else {
            Err(format!("expected <{name}>, found <{}>", self.qname))
        }
    }

    /// Only the listed child elements, and no character data next to them.
    pub fn only_children(&self, allowed: &[&str]) -> Result<(), String> {
        if !self.text.trim().is_empty() {
            return Err(format!("unexpected text in <{}>", self.qname));
        }
        match self.children.iter().find(|c| !allowed.contains(&c.local())) {
            Some(c) => Err(format!("unexpected <{}> in <{}>", c.qname, self.qname)),
            None => Ok(()),
        }
    }

    pub fn optional(&self, name: &str) -> Result<Option<&Element>, String> {
        let mut found = self.children.iter().filter(|c| c.local() == name);
        match (found.next(), found.next()) {
            (Some(_), Some(_)) => Err(format!("<{name}> appears more than once in <{}>", self.qname)),
            (first, _) => Ok(first),
        }
    }

    pub fn one(&self, name: &str) -> Result<&Element, String> {
        self.optional(name)?.ok_or_else(|| format!("missing <{name}> in <{}>", self.qname))
    }

    /// The text of an element that has no child elements.
    pub fn leaf_text(&self) -> Result<&str, String> {
        match self.children.first() {
            Some(c) => Err(format!("unexpected <{}> in <{}>", c.qname, self.qname)),
            None => Ok(&self.text),
        }
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

const MAX_DEPTH: usize = 32;

pub fn parse(input: &str) -> Result<Element, String> {
    let s = input.strip_prefix('\u{feff}').unwrap_or(input);
    let mut p = Parser { s, pos: 0 };
    if p.rest().starts_with("<?xml") {
        p.skip_past("?>")?;
    }
    p.misc()?;
    if !p.rest().starts_with('<') {
        return Err("expected a root element".into());
    }
    let root = p.element(0)?;
    p.misc()?;
    if p.pos != p.s.len() {
        return Err(format!("unexpected content after the root element at byte {}", p.pos));
    }
    Ok(root)
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start_matches([' ', '\t', '\r', '\n']).len();
    }

    fn skip_past(&mut self, end: &str) -> Result<(), String> {
        match self.rest().find(end) {
            Some(i) => {
                self.pos += i + end.len();
                Ok(())
            }
            None => Err(format!("unterminated construct (missing {end:?})")),
        }
    }

    /// Whitespace, comments and processing instructions between top-level constructs.
    fn misc(&mut self) -> Result<(), String> {
        loop {
            self.skip_ws();
            let r = self.rest();
            if r.starts_with("<!--") {
                self.skip_past("-->")?;
            } else if r.starts_with("<?") {
                self.skip_past("?>")?;
            } else if r.starts_with("<!") {
                return Err("DTDs and declarations are not allowed".into());
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let r = self.rest();
        let len = r.find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))).unwrap_or(r.len());
        let name = &r[..len];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
            return Err(format!("invalid name at byte {}", self.pos));
        }
        self.pos += len;
        Ok(name.to_string())
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            Ok(())
        } else {
            Err(format!("expected {token:?} at byte {}", self.pos))
        }
    }

    fn element(&mut self, depth: usize) -> Result<Element, String> {
        if depth > MAX_DEPTH {
            return Err("elements nested too deeply".into());
        }
        self.expect("<")?;
        let qname = self.name()?;
        let mut el = Element { qname, attrs: Vec::new(), children: Vec::new(), text: String::new() };
        loop {
            let before = self.pos;
            self.skip_ws();
            if self.rest().starts_with("/>") {
                self.pos += 2;
                return Ok(el);
            }
            if self.rest().starts_with('>') {
                self.pos += 1;
                break;
            }
            if self.pos == before {
                return Err(format!("expected whitespace before an attribute at byte {}", self.pos));
            }
            let name = self.name()?;
            self.skip_ws();
            self.expect("=")?;
            self.skip_ws();
            let quote = match self.rest().chars().next() {
                Some(q @ ('"' | '\'')) => q,
                _ => return Err(format!("unquoted attribute value at byte {}", self.pos)),
            };
            self.pos += 1;
            let end = self.rest().find(quote).ok_or("unterminated attribute value")?;
            let raw = &self.rest()[..end];
            if raw.contains('<') {
                return Err("'<' in an attribute value".into());
            }
            let value = unescape(raw)?;
            self.pos += end + 1;
            if el.attrs.iter().any(|(n, _)| *n == name) {
                return Err(format!("duplicate attribute {name}"));
            }
            el.attrs.push((name, value));
        }
        loop {
            let r = self.rest();
            if r.is_empty() {
                return Err(format!("unclosed <{}>", el.qname));
            }
            if r.starts_with("</") {
                self.pos += 2;
                let close = self.name()?;
                if close != el.qname {
                    return Err(format!("</{close}> closes <{}>", el.qname));
                }
                self.skip_ws();
                self.expect(">")?;
                return Ok(el);
            } else if r.starts_with("<!--") {
                self.skip_past("-->")?;
            } else if let Some(cdata) = r.strip_prefix("<![CDATA[") {
                let end = cdata.find("]]>").ok_or("unterminated CDATA")?;
                el.text.push_str(&cdata[..end]);
                self.pos += "<![CDATA[".len() + end + 3;
            } else if r.starts_with("<?") {
                self.skip_past("?>")?;
            } else if r.starts_with("<!") {
                return Err("declarations are not allowed inside elements".into());
            } else if r.starts_with('<') {
                let child = self.element(depth + 1)?;
                el.children.push(child);
            } else {
                let end = r.find('<').unwrap_or(r.len());
                el.text.push_str(&unescape(&r[..end])?);
                self.pos += end;
            }
        }
    }
}

fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find(';').ok_or("unterminated entity reference")?;
        let entity = &after[..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse::<u32>().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_documents() {
        let e = parse(
            "\u{feff}<?xml version=\"1.0\"?>\n<!-- c --><a:Root xmlns:a='u' x=\"1 &amp; 2\"><B>t&lt;&#65;&#x42;</B>\
             <C/><![CDATA[<raw>]]></a:Root>\n",
        )
        .unwrap();
        assert_eq!(e.local(), "Root");
        assert_eq!(e.attr("x"), Some("1 & 2"));
        assert_eq!(e.one("B").unwrap().leaf_text().unwrap(), "t<AB");
        assert_eq!(e.text, "<raw>");
        assert!(e.one("C").unwrap().children.is_empty());
    }

    #[test]
    fn rejects_malformed_documents() {
        for bad in [
            "",
            "text",
            "<a>",
            "<a></b>",
            "<a><b></a></b>",
            "<a>&foo;</a>",
            "<a>&amp</a>",
            "<a x=1></a>",
            "<a x='1'x='2'></a>",
            "<a x='1' x='2'></a>",
            "<a/><b/>",
            "<!DOCTYPE a><a/>",
            "<a><!ENTITY x 'y'></a>",
            "<a/>trailing",
            "<1a/>",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
