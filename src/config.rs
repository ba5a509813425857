//! Where a repository's data lives: `.lodeconfig` (committed, so every
//! clone knows) and git config (`lode.remote.url`, which overrides it on
//! one machine).

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::git::Repo;

pub const FILE: &str = ".lodeconfig";

/// The committed configuration file.
pub const TEMPLATE: &str = "\
# lode configuration, committed with the repository (see docs/CONFIGURATION.md).
version = 1

# Where the data of this repository lives, for push, fetch and clone.
# [remote]
# url = \"s3://bucket/prefix\"
";

#[derive(Debug, Default, Deserialize)]
struct LodeConfig {
    #[serde(default)]
    remote: Option<RemoteSection>,
}

#[derive(Debug, Default, Deserialize)]
struct RemoteSection {
    url: Option<String>,
}

/// The remote URL and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub url: String,
    /// `git config lode.remote.url`, `.lodeconfig`, or `.lodeconfig in HEAD`.
    pub source: &'static str,
}

/// Parse `.lodeconfig` text; a malformed file is an error naming the line.
pub fn parse_url(text: &str) -> Result<Option<String>> {
    let parsed: LodeConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{FILE}: {e}"))?;
    Ok(parsed.remote.and_then(|r| r.url))
}

/// The remote URL for this repository: git config first, then the
/// working tree's `.lodeconfig`, then the one committed in HEAD (a clone
/// that has not checked out yet).
pub fn remote_url(repo: &Repo) -> Result<Option<RemoteUrl>> {
    if let Ok(url) = repo.git(&["config", "--get", "lode.remote.url"]) {
        let url = url.trim();
        if !url.is_empty() {
            return Ok(Some(RemoteUrl {
                url: url.to_string(),
                source: "git config lode.remote.url",
            }));
        }
    }
    let path = repo.workdir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return Ok(parse_url(&text)?.map(|url| RemoteUrl { url, source: FILE }));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    match repo.git(&["show", &format!("HEAD:{FILE}")]) {
        Ok(text) => Ok(parse_url(&text)?.map(|url| RemoteUrl {
            url,
            source: ".lodeconfig in HEAD",
        })),
        Err(_) => Ok(None),
    }
}

/// `text` (a `.lodeconfig`, possibly empty) with its remote URL set to
/// `url`; other settings and comments are kept.
pub fn with_url(text: &str, url: &str) -> Result<String> {
    parse_url(text)?;
    let mut out = String::new();
    let mut in_remote = false;
    for line in text.lines() {
        let t = line.trim();
        let header = t.trim_start_matches('#').trim();
        if header.starts_with('[') {
            in_remote = header == "[remote]";
            if in_remote {
                continue;
            }
        }
        if in_remote && t.trim_start_matches('#').trim().starts_with("url") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if out.trim().is_empty() {
        out = TEMPLATE.to_string();
        out = with_url(&out, url)?;
        return Ok(out);
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out.push_str(&format!("\n[remote]\nurl = {}\n", toml_string(url)));
    parse_url(&out)?;
    Ok(out)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_the_url_keeps_the_rest_and_reads_back() {
        let text = with_url(TEMPLATE, "s3://bucket/models").unwrap();
        assert_eq!(
            parse_url(&text).unwrap().as_deref(),
            Some("s3://bucket/models")
        );
        assert!(text.contains("version = 1"));
        let again = with_url(&text, "file:///srv/\"odd\"").unwrap();
        assert_eq!(
            parse_url(&again).unwrap().as_deref(),
            Some("file:///srv/\"odd\"")
        );
        assert_eq!(again.matches("[remote]").count(), 1);
        let empty = with_url("", "gs://b").unwrap();
        assert_eq!(parse_url(&empty).unwrap().as_deref(), Some("gs://b"));
    }

    #[test]
    fn a_malformed_file_names_the_line() {
        let err = parse_url("version = 1\n[remote\nurl = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
