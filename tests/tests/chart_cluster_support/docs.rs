//! What docs/metrics.md documents: the metrics with their labels, the
//! label values, and the scrape configuration users copy.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{read, root};

/// docs/metrics.md: metric -> documented labels.
pub fn documented_metrics() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for line in read(root().join("docs/metrics.md"))?.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`zmq_proxy") {
            continue;
        }
        let labels = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| l.starts_with('`'))
            .filter_map(|l| {
                l.trim_matches('`')
                    .split_whitespace()
                    .next()
                    .map(|s| s.trim_matches('`').to_string())
            })
            .collect();
        out.insert(cells[1].trim_matches('`').to_string(), labels);
    }
    Ok(out)
}

/// The documented label values (the "Label values" table).
pub fn documented_label_values() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let doc = read(root().join("docs/metrics.md"))?;
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() == 4 && ["`socket`", "`direction`", "`type`", "`reason`"].contains(&cells[1])
        {
            let values: BTreeSet<String> = cells[2]
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, v)| v.to_string())
                .collect();
            out.insert(cells[1].trim_matches('`').to_string(), values);
        }
    }
    Ok(out)
}

/// The scrape configuration documented in docs/metrics.md (the yaml block
/// that starts with `scrape_configs:`).
pub fn documented_scrape_config() -> Result<Value> {
    let doc = read(root().join("docs/metrics.md"))?;
    let start = doc
        .find("```yaml\nscrape_configs:")
        .context("scrape config block in docs/metrics.md")?;
    let block = &doc[start + "```yaml\n".len()..];
    let block = &block[..block.find("```").context("end of block")?];
    let v: serde_yaml::Value = serde_yaml::from_str(block)?;
    Ok(serde_json::to_value(v)?)
}
