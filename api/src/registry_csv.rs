//! The CSV form of the asset and tag registers: parsing and checking rows (every problem
//! reported with its line and column, all at once) and writing cells. Pure; the routes
//! (`routes::registry`) resolve names against the database and write.
//!
//! Cells: empty means "not set"; dates are `YYYY-MM-DD`; labels are `key=value` pairs joined
//! by `;`. A cell that starts with `=`, `+`, `-` or `@` is written with a leading `'` so that
//! spreadsheets do not run it as a formula, and a leading `'` before one of those is dropped
//! again on import, so an exported file imports unchanged.

use std::collections::BTreeMap;

use chrono::NaiveDate;

/// A problem with a cell or a row: its line in the file (1 = the header) and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub column: String,
    pub message: String,
}

impl RowError {
    fn new(line: u64, column: &str, message: impl Into<String>) -> Self {
        Self {
            line,
            column: column.to_owned(),
            message: message.into(),
        }
    }
}

pub const ASSET_COLUMNS: [&str; 13] = [
    "name",
    "site",
    "area",
    "parent",
    "criticality",
    "status",
    "asset_class",
    "manufacturer",
    "model",
    "serial_number",
    "installed_on",
    "warranty_until",
    "labels",
];

pub const TAG_COLUMNS: [&str; 8] = [
    "gateway",
    "name",
    "asset",
    "unit",
    "description",
    "range_min",
    "range_max",
    "labels",
];

const STATUSES: [&str; 5] = [
    "operational",
    "degraded",
    "down",
    "standby",
    "decommissioned",
];

/// One asset row. `None`: the cell was empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssetRow {
    pub line: u64,
    pub name: String,
    pub site: Option<String>,
    pub area: Option<String>,
    pub parent: Option<String>,
    pub criticality: Option<i16>,
    pub status: Option<String>,
    pub asset_class: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub installed_on: Option<NaiveDate>,
    pub warranty_until: Option<NaiveDate>,
    pub labels: BTreeMap<String, String>,
}

/// One tag row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagRow {
    pub line: u64,
    pub gateway: String,
    pub name: String,
    pub asset: Option<String>,
    pub unit: Option<String>,
    pub description: String,
    pub range_min: Option<f64>,
    pub range_max: Option<f64>,
    pub labels: BTreeMap<String, String>,
}

/// The most rows one import takes.
pub const MAX_ROWS: usize = 100_000;

fn undefuse(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@']) => rest,
        _ => cell,
    }
}

/// A cell as written: formula-like text gets a leading `'`.
pub fn defuse(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

pub fn format_labels(labels: &serde_json::Map<String, serde_json::Value>) -> String {
    labels
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(";")
}

/// An asset class or label key: 1-64 letters, digits, `.`, `_` and `-` (as the database
/// checks them).
pub fn valid_key(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Reads a file of `columns` (a subset, in any order, `required` among them) into records;
/// the header's problems end the reading.
fn records(
    text: &[u8],
    columns: &[&str],
    required: &[&str],
    errors: &mut Vec<RowError>,
) -> Vec<(u64, BTreeMap<String, String>)> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(text);
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|c| c.trim().to_ascii_lowercase()).collect(),
        Err(e) => {
            errors.push(RowError::new(1, "", format!("cannot read the header: {e}")));
            return Vec::new();
        }
    };
    for c in &header {
        if !columns.contains(&c.as_str()) {
            errors.push(RowError::new(
                1,
                c,
                format!("unknown column; the columns are {}", columns.join(", ")),
            ));
        }
    }
    for r in required {
        if !header.iter().any(|c| c == r) {
            errors.push(RowError::new(1, r, "this column is required"));
        }
    }
    if !errors.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for record in reader.records() {
        match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                if out.len() >= MAX_ROWS {
                    errors.push(RowError::new(
                        line,
                        "",
                        format!("at most {MAX_ROWS} rows per import"),
                    ));
                    break;
                }
                let cells = header
                    .iter()
                    .zip(record.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.clone(), undefuse(v).to_owned()))
                    .collect();
                out.push((line, cells));
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(RowError::new(line, "", format!("not a CSV row: {e}")));
            }
        }
    }
    out
}

fn text_cell(
    cells: &mut BTreeMap<String, String>,
    key: &str,
    max: usize,
    line: u64,
    errors: &mut Vec<RowError>,
) -> Option<String> {
    let value = cells.remove(key)?;
    if value.chars().count() > max || value.chars().any(char::is_control) {
        errors.push(RowError::new(
            line,
            key,
            format!("at most {max} characters, no control characters"),
        ));
        return None;
    }
    Some(value)
}

fn date(
    cells: &mut BTreeMap<String, String>,
    key: &str,
    line: u64,
    errors: &mut Vec<RowError>,
) -> Option<NaiveDate> {
    let value = cells.remove(key)?;
    match NaiveDate::parse_from_str(&value, "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(_) => {
            errors.push(RowError::new(
                line,
                key,
                format!("{value:?} is not a date YYYY-MM-DD"),
            ));
            None
        }
    }
}

fn number(
    cells: &mut BTreeMap<String, String>,
    key: &str,
    line: u64,
    errors: &mut Vec<RowError>,
) -> Option<f64> {
    let value = cells.remove(key)?;
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() => Some(v),
        _ => {
            errors.push(RowError::new(
                line,
                key,
                format!("{value:?} is not a number"),
            ));
            None
        }
    }
}

fn labels(
    cells: &mut BTreeMap<String, String>,
    line: u64,
    errors: &mut Vec<RowError>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(value) = cells.remove("labels") else {
        return out;
    };
    for pair in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v))
                if valid_key(k.trim())
                    && (1..=200).contains(&v.trim().chars().count())
                    && !v.chars().any(char::is_control) =>
            {
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => errors.push(RowError::new(
                line,
                "labels",
                format!(
                    "{pair:?}: write labels as key=value;key2=value2 (keys: letters, digits, . _ -)"
                ),
            )),
        }
    }
    out
}

/// The asset rows of `text`, and every problem found without the database.
pub fn parse_assets(text: &[u8]) -> (Vec<AssetRow>, Vec<RowError>) {
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let mut names = std::collections::HashMap::new();
    for (line, mut cells) in records(text, &ASSET_COLUMNS, &["name"], &mut errors) {
        let e = &mut errors;
        let name = text_cell(&mut cells, "name", 200, line, e);
        if name.is_none() && !e.iter().any(|x| x.line == line && x.column == "name") {
            e.push(RowError::new(line, "name", "every asset needs a name"));
        }
        let criticality = cells
            .remove("criticality")
            .and_then(|c| match c.parse::<i16>() {
                Ok(v) if (1..=5).contains(&v) => Some(v),
                _ => {
                    e.push(RowError::new(
                        line,
                        "criticality",
                        "must be 1 (least) to 5 (most critical)",
                    ));
                    None
                }
            });
        let status = cells.remove("status").and_then(|s| {
            if STATUSES.contains(&s.as_str()) {
                Some(s)
            } else {
                e.push(RowError::new(
                    line,
                    "status",
                    format!("must be one of {}", STATUSES.join(", ")),
                ));
                None
            }
        });
        let asset_class = cells.remove("asset_class").and_then(|c| {
            if valid_key(&c) {
                Some(c)
            } else {
                e.push(RowError::new(
                    line,
                    "asset_class",
                    "use 1-64 letters, digits, . _ -",
                ));
                None
            }
        });
        let row = AssetRow {
            line,
            site: text_cell(&mut cells, "site", 200, line, e),
            area: text_cell(&mut cells, "area", 200, line, e),
            parent: text_cell(&mut cells, "parent", 200, line, e),
            criticality,
            status,
            asset_class,
            manufacturer: text_cell(&mut cells, "manufacturer", 200, line, e),
            model: text_cell(&mut cells, "model", 200, line, e),
            serial_number: text_cell(&mut cells, "serial_number", 200, line, e),
            installed_on: date(&mut cells, "installed_on", line, e),
            warranty_until: date(&mut cells, "warranty_until", line, e),
            labels: labels(&mut cells, line, e),
            name: name.unwrap_or_default(),
        };
        if let (Some(i), Some(w)) = (row.installed_on, row.warranty_until)
            && w < i
        {
            e.push(RowError::new(
                line,
                "warranty_until",
                "must not be before installed_on",
            ));
        }
        if row.parent.as_deref() == Some(row.name.as_str()) && !row.name.is_empty() {
            e.push(RowError::new(
                line,
                "parent",
                "an asset cannot be its own parent",
            ));
        }
        if !row.name.is_empty()
            && let Some(first) = names.insert(row.name.clone(), line)
        {
            e.push(RowError::new(
                line,
                "name",
                format!("{:?} is on line {first} already", row.name),
            ));
        }
        rows.push(row);
    }
    (rows, errors)
}

/// The tag rows of `text`, and every problem found without the database.
pub fn parse_tags(text: &[u8]) -> (Vec<TagRow>, Vec<RowError>) {
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (line, mut cells) in records(text, &TAG_COLUMNS, &["gateway", "name"], &mut errors) {
        let e = &mut errors;
        let gateway = text_cell(&mut cells, "gateway", 64, line, e);
        let name = text_cell(&mut cells, "name", 128, line, e);
        if gateway.is_none() {
            e.push(RowError::new(
                line,
                "gateway",
                "every tag needs its gateway's code",
            ));
        }
        if name.is_none() {
            e.push(RowError::new(line, "name", "every tag needs a name"));
        }
        let row = TagRow {
            line,
            gateway: gateway.unwrap_or_default(),
            name: name.unwrap_or_default(),
            asset: text_cell(&mut cells, "asset", 200, line, e),
            unit: text_cell(&mut cells, "unit", 20, line, e),
            description: text_cell(&mut cells, "description", 500, line, e).unwrap_or_default(),
            range_min: number(&mut cells, "range_min", line, e),
            range_max: number(&mut cells, "range_max", line, e),
            labels: labels(&mut cells, line, e),
        };
        if let (Some(lo), Some(hi)) = (row.range_min, row.range_max)
            && lo >= hi
        {
            e.push(RowError::new(line, "range_max", "must be above range_min"));
        }
        let key = (row.gateway.clone(), row.name.clone());
        if !row.name.is_empty()
            && let Some(first) = seen.insert(key, line)
        {
            e.push(RowError::new(
                line,
                "name",
                format!("this gateway's tag is on line {first} already"),
            ));
        }
        rows.push(row);
    }
    (rows, errors)
}

/// The order to create assets in so that every parent named in the file comes before its
/// children; `Err` with the lines of a cycle among the file's rows.
pub fn parents_first(rows: &[AssetRow]) -> Result<Vec<usize>, Vec<u64>> {
    let index: std::collections::HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    let mut state = vec![0u8; rows.len()]; // 0 new, 1 visiting, 2 done
    let mut order = Vec::with_capacity(rows.len());
    for start in 0..rows.len() {
        let mut path: Vec<usize> = Vec::new();
        let mut current = Some(start);
        while let Some(i) = current {
            match state[i] {
                2 => break,
                1 => {
                    let from = path.iter().position(|&p| p == i).unwrap_or(0);
                    return Err(path[from..].iter().map(|&p| rows[p].line).collect());
                }
                _ => {}
            }
            state[i] = 1;
            path.push(i);
            current = rows[i]
                .parent
                .as_deref()
                .and_then(|p| index.get(p).copied());
        }
        for &i in path.iter().rev() {
            state[i] = 2;
            order.push(i);
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_cell_is_reported_with_its_line_and_column() {
        let csv = "name,site,criticality,status,installed_on,warranty_until,labels\n\
                   Line 1,North,3,operational,2020-01-01,2030-01-01,line=1;area=a\n\
                   ,North,9,broken,2020-13-01,,bad key=x\n\
                   Line 1,North,,,2021-01-01,2020-01-01,\n";
        let (rows, errors) = parse_assets(csv.as_bytes());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].labels.get("line").map(String::as_str), Some("1"));
        let got: Vec<(u64, &str)> = errors.iter().map(|e| (e.line, e.column.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "name"),
                (3, "criticality"),
                (3, "status"),
                (3, "installed_on"),
                (3, "labels"),
                (4, "warranty_until"),
                (4, "name"),
            ]
        );
    }

    #[test]
    fn unknown_and_missing_columns_stop_at_the_header() {
        let (rows, errors) = parse_assets(b"site,colour\nNorth,red\n");
        assert!(rows.is_empty());
        let got: Vec<&str> = errors.iter().map(|e| e.column.as_str()).collect();
        assert_eq!(got, ["colour", "name"]);
    }

    #[test]
    fn quoted_cells_and_defused_formulas_round_trip() {
        let csv = "name,model,labels\n\"Press, big\",\"'=2+2\",\"note=a \"\"quoted\"\" word\"\n";
        let (rows, errors) = parse_assets(csv.as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows[0].name, "Press, big");
        assert_eq!(rows[0].model.as_deref(), Some("=2+2"));
        assert_eq!(defuse("=2+2"), "'=2+2");
        assert_eq!(defuse("Press"), "Press");
    }

    #[test]
    fn parents_come_before_children_and_cycles_are_found() {
        let row = |line, name: &str, parent: Option<&str>| AssetRow {
            line,
            name: name.into(),
            parent: parent.map(Into::into),
            ..AssetRow::default()
        };
        let rows = [
            row(2, "pump", Some("press")),
            row(3, "press", Some("line")),
            row(4, "line", None),
            row(5, "motor", Some("existing-elsewhere")),
        ];
        let order = parents_first(&rows).unwrap();
        let pos = |name: &str| order.iter().position(|&i| rows[i].name == name).unwrap();
        assert!(pos("line") < pos("press") && pos("press") < pos("pump"));
        assert_eq!(order.len(), 4);
        let cycle = [row(2, "a", Some("b")), row(3, "b", Some("a"))];
        assert_eq!(parents_first(&cycle).unwrap_err().len(), 2);
    }

    #[test]
    fn tag_rows_check_ranges_and_duplicates() {
        let csv = "gateway,name,asset,unit,range_min,range_max\n\
                   gw-1,temp,Press 1,degC,0,150\n\
                   gw-1,temp,,,10,5\n\
                   ,pressure,,bar,x,\n";
        let (rows, errors) = parse_tags(csv.as_bytes());
        assert_eq!(rows[0].range_max, Some(150.0));
        let got: Vec<(u64, &str)> = errors.iter().map(|e| (e.line, e.column.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "range_max"),
                (3, "name"),
                (4, "gateway"),
                (4, "range_min")
            ]
        );
    }
}
