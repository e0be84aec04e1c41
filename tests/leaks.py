"""A leak scanner for a built paper: reads every rendered output of a build (the web book's pages with
their tables, the DOCX's paragraphs and tables, the PDF's text) and reports what a disclosure rule
forbids there:

- "small count": a count from 1 to threshold - 1 shown in a count context: a table cell "n" or
  "n (p%)" in a row or column of counts, "n patients/events/deaths/...", "n = 5", "Excluded: 5",
  "5 (0.4%)" in running text; a masked count shown beside its exact percentage ("<11 (0.8%)": the
  percentage of a shown denominator gives the count back);
- "derivable": a masked count (or a never-shown complement, such as the patients without the
  outcome of a subgroup) that the sums a reader knows pin to one whole number from 1 to
  threshold - 1: a Table 1 row (Overall = the groups) and column (a variable's levels and missing
  values = the group's size), a flow (before - removed = after), the levels of each subgroup (they
  add up to the same patients and events), and a per-group table's patients and events;
- "identifier", "date of birth", "path": person_id values, MRN-like strings, a date next to "birth",
  absolute paths (/tmp/..., /work/..., /root/..., /home/..., the home folder) and any string of
  `forbidden`.

A module, not a test file: tests/test_leaks.py checks it on hand-made pages, the end-to-end tests
call `scan_outputs` on their builds. Figures (images) are not read: their counts are drawn from the
same masked tables (the flow diagram from `flow_table`)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# --- what a finding is --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    file: str
    kind: str      # "small count", "derivable", "identifier", "date of birth", "path"
    where: str     # "table 2, row 'Sepsis, n (%)', column 'Died'" or "text"
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind} in {self.where}: {self.detail}"


@dataclass
class Table:
    rows: list                       # list of rows, each a list of cell texts; rows[0] is the header
    caption: str = ""


@dataclass
class Page:
    file: str
    texts: list = field(default_factory=list)    # paragraphs, captions, printed outputs
    tables: list = field(default_factory=list)


# --- reading the outputs ------------------------------------------------------------------------

def _clean(text: str) -> str:
    return re.sub(r"[ \t\r\f\v\u00a0]+", " ", str(text)).strip()


def read_html(path: Path, name: str | None = None) -> Page:
    "A web page: its tables (header rows first) and its other text; source code cells are left out."
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(Path(path).read_text(encoding="utf-8", errors="replace"), "html.parser")
    page = Page(name or str(path))
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    # a notebook's code is not data (its outputs are)
    for tag in soup.select("div.cell_input, div.highlight-ipython3, div.highlight-python"):
        tag.decompose()
    links = [value for tag in soup.find_all(True) for attribute in ("href", "src")
             if isinstance(value := tag.get(attribute), str)]
    for table in soup.find_all("table"):
        rows = []
        for row in table.find_all("tr"):
            rows.append([_clean(cell.get_text(" ")) for cell in row.find_all(["th", "td"])])
        caption = table.find("caption")
        page.tables.append(Table(_squared(rows), _clean(caption.get_text(" ")) if caption else ""))
        table.decompose()
    for block in soup.find_all(["p", "li", "pre", "figcaption", "caption", "dt", "dd", "h1", "h2", "h3", "h4",
                                "span", "div"]):
        if block.find(["p", "li", "pre", "div", "figcaption"]):   # the innermost blocks only
            continue
        text = _clean(block.get_text(" "))
        if text:
            page.texts.append(text)
    page.texts += links
    return page


def _squared(rows: list) -> list:
    "Rows of one length: a header row of a pandas table with a row index has one cell fewer, or more."
    rows = [r for r in rows if r]
    if not rows:
        return rows
    width = max(len(r) for r in rows)
    rows = [([""] * (width - len(r)) + r) if len(r) < width else r for r in rows]
    # pandas writes the index's name in a header row of its own: one header row
    if len(rows) > 2 and rows[0][0] == "" and rows[1][0] and not any(rows[1][1:]):
        rows = [[rows[1][0], *rows[0][1:]], *rows[2:]]
    return rows


def read_docx(path: Path, name: str | None = None) -> Page:
    "The DOCX: its paragraphs (body, headers, footers) and its tables."
    import docx

    document = docx.Document(str(path))
    page = Page(name or str(path))
    page.texts = [_clean(p.text) for p in document.paragraphs if _clean(p.text)]
    for section in document.sections:
        for part in (section.header, section.footer):
            page.texts += [_clean(p.text) for p in part.paragraphs if _clean(p.text)]
    for table in document.tables:
        rows = []
        for row in table.rows:
            cells, last = [], None
            for cell in row.cells:   # merged cells repeat: keep one
                if cell._tc is last:
                    continue
                last = cell._tc
                cells.append(_clean(cell.text))
            rows.append(cells)
        page.tables.append(Table(_squared(rows)))
    return page


def pdf_text(path: Path) -> str:
    "The PDF's text: pdftotext (poppler) when installed, else pypdf, else PyMuPDF."
    import shutil
    import subprocess

    if shutil.which("pdftotext"):
        return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                              check=True).stdout
    try:
        from pypdf import PdfReader
    except ImportError:
        import fitz   # PyMuPDF
        with fitz.open(str(path)) as document:
            return "\n".join(page.get_text() for page in document)
    return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def read_pdf(path: Path, name: str | None = None) -> Page:
    "The PDF's text, one line a text (its tables are read as lines of text)."
    return Page(name or str(path), texts=[_clean(line) for line in pdf_text(path).splitlines() if _clean(line)])


def read_build(build_dir) -> list[Page]:
    "Every rendered output of a build: html/**/*.html, manuscript.docx (any *.docx), manuscript.pdf (any *.pdf)."
    build_dir = Path(build_dir)
    pages = []
    for path in sorted(build_dir.rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(build_dir))
        if any(part.startswith(("_sources", "_static")) for part in path.relative_to(build_dir).parts):
            continue   # the book's copies of the sources and its theme: no rendered output
        if path.suffix == ".html" and name not in ("html/genindex.html", "html/search.html"):
            pages.append(read_html(path, name))
        elif path.suffix == ".docx":
            pages.append(read_docx(path, name))
        elif path.suffix == ".pdf" and "_images" not in path.parts:
            pages.append(read_pdf(path, name))
    return pages


# --- counts in context --------------------------------------------------------------------------

NUMBER = r"\d{1,3}(?:,\d{3})+|\d+"
# a whole number on its own: not part of a decimal, a word, a range, a version or a date
WHOLE = rf"(?<![\w.,/:\-–])({NUMBER})(?![\w%]|[.,/:\-–]\d)"
# people and what happens to them: the nouns of a count that the disclosure rule protects
NOUNS = (r"patients?|persons?|people|individuals?|participants?|subjects?|stays?|admissions?|visits?|"
         r"events?|deaths?|cases?|users?|women|men|children|adults?|survivors?|non-survivors?|"
         r"new users?")
COUNT_IN_TEXT = [
    # "5 patients", "5 ICU stays", "5 new users", "5 index events"
    re.compile(rf"{WHOLE}\s+(?:[A-Za-z-]+\s+){{0,2}}?(?:{NOUNS})\b", re.I),
    # "n = 5", "N=5", "(n 5)"
    re.compile(rf"\b[nN]\s*=\s*({NUMBER})(?![\w.,]\d)"),
    # "Excluded: 5", "Removed: 5"
    re.compile(rf"\b(?:excluded|removed|died|deaths|events)\s*:\s*({NUMBER})(?![\w.,]\d)", re.I),
    # "5 (0.4%)": a count with its percentage
    re.compile(rf"{WHOLE}\s*\(\s*\d+(?:\.\d+)?\s*%\s*\)"),
]
# "fewer than 11 patients", "at least 5 events": a rule's number, not a count
NOT_A_COUNT_BEFORE = re.compile(r"(?:fewer|less|more|greater|lower|higher)\s+than\s*$|at\s+(?:least|most)\s*$|"
                                r"(?:under|over|below|above|<|>|≤|≥|<=|>=|per|every|each\s+of|top|first|last)\s*$|"
                                r"(?:table|figure|fig\.|appendix|item|step|version|day|days|week|month|year|"
                                r"chapter|section|page|row|column|model|fold)\s*[S]?\s*$", re.I)
MASKED_WITH_PERCENT = re.compile(r"<\s?(\d+)\s*\(\s*(\d+(?:\.\d+)?)\s*%\s*\)")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def text_counts(text: str, threshold: int) -> list[tuple[int, str]]:
    "(count, snippet) of every count from 1 to threshold - 1 that `text` shows in a count context."
    found = []
    for pattern in COUNT_IN_TEXT:
        for match in pattern.finditer(text):
            value = _int(match.group(1))
            if not 1 <= value < threshold:
                continue
            before = text[max(0, match.start() - 30):match.start()]
            if NOT_A_COUNT_BEFORE.search(before):
                continue
            if pattern is COUNT_IN_TEXT[0] and not before.strip() and re.match(r"\s+[A-Z][a-z]", text[match.end(1):]):
                continue   # "7 Participants ...": a checklist's item number at the start of a PDF line
            found.append((value, _snippet(text, match.start(), match.end())))
    for match in MASKED_WITH_PERCENT.finditer(text):
        if _int(match.group(1)) == threshold:
            found.append((-1, _snippet(text, match.start(), match.end()) + "  (a masked count with its exact "
                                                                         "percentage)"))
    return found


def _snippet(text: str, start: int, end: int, width: int = 40) -> str:
    return ("…" if start > width else "") + text[max(0, start - width):end + width].strip() + (
        "…" if end + width < len(text) else "")


# --- identifiers, dates of birth, paths ---------------------------------------------------------

IDENTIFIERS = [re.compile(r"\bMRN[-_ #:]*[A-Z0-9][A-Z0-9-]{2,}", re.I),
               re.compile(r"\bperson_?id\s*[=:]?\s*\d+", re.I),
               re.compile(r"\b(?:patient|medical record|hospital)\s+(?:number|no\.?|id)\s*[:#]?\s*\d{3,}", re.I),
               re.compile(r"\b\d{3}-\d{2}-\d{4}\b")]   # social-security-like
DATE = r"(?:(?:19|20)\d\d-[01]\d-[0-3]\d|[0-3]?\d[./][01]?\d[./](?:19|20)\d\d|(?:19|20)\d\d/[01]\d/[0-3]\d)"
BIRTH = re.compile(rf"(?:birth|born|DOB|d\.o\.b)\W{{0,30}}{DATE}|{DATE}\W{{0,30}}(?:birth|born|DOB)", re.I)
PATHS = re.compile(r"(?<![\w.:/~-])(?:/(?:tmp|work|root|home|Users|var/folders|private|mnt|opt|srv|scratch)/[^\s'\"<>)\]]*"
                   r"|[A-Z]:\\\\?[^\s'\"<>]+|file:/{2,3}[^\s'\"<>]+)")


def _privacy(text: str, forbidden, home: str | None) -> list[tuple[str, str]]:
    found = []
    for pattern in IDENTIFIERS:
        found += [("identifier", _snippet(text, m.start(), m.end())) for m in pattern.finditer(text)]
    found += [("date of birth", _snippet(text, m.start(), m.end())) for m in BIRTH.finditer(text)]
    found += [("path", _snippet(text, m.start(), m.end())) for m in PATHS.finditer(text)]
    if home and len(home) > 1 and home in text and not PATHS.search(text):
        found.append(("path", _snippet(text, text.index(home), text.index(home) + len(home))))
    if forbidden:
        for match in _forbidden_pattern(tuple(forbidden)).finditer(text):
            found.append(("identifier", _snippet(text, match.start(), match.end())))
    return found


_PATTERNS = {}


def _forbidden_pattern(words: tuple) -> re.Pattern:
    "One pattern for every string of `words` (compiled once: a source may hold thousands of identifiers)."
    if words not in _PATTERNS:
        listed = sorted({str(w) for w in words if str(w)}, key=len, reverse=True)
        _PATTERNS[words] = re.compile("|".join(re.escape(w) for w in listed) or r"(?!x)x")
    return _PATTERNS[words]


def source_identifiers(database) -> list[str]:
    """What identifies a person in an OMOP DuckDB file: every person_source_value (6 characters or more)
    and every date of birth (ISO), for `scan_outputs(forbidden=...)`."""
    import duckdb

    with duckdb.connect(str(database), read_only=True) as con:
        rows = con.execute("SELECT person_source_value, CAST(birth_datetime AS DATE) FROM person").fetchall()
    values = {str(v) for v, _ in rows if v is not None and len(str(v)) >= 6}
    values |= {born.isoformat() for _, born in rows if born is not None}
    return sorted(values)


def run_threshold(run_dir) -> int:
    "The small-count threshold a run used (its study.yaml's parameters, as run)."
    import yaml

    study = yaml.safe_load((Path(run_dir) / "study.yaml").read_text())
    return int(study["parameters"]["small_count_threshold"])


# --- tables: cells, count rows and columns ------------------------------------------------------

CELL_COUNT = re.compile(rf"^({NUMBER})(?:\s*\(\s*(\d+(?:\.\d+)?)\s*%\s*\))?$")
CELL_MASKED = re.compile(r"^<\s?(\d+)(?:\s*\(\s*(<?)\s*(\d+(?:\.\d+)?)\s*%\s*\))?$")
HIDDEN = {"–", "-", "—", "not shown"}
COUNT_HEADER = re.compile(rf"^(?:n|no\.|number|count)\b|\b(?:{NOUNS}|removed|excluded|died|observed)\b", re.I)
NOT_COUNT_HEADER = re.compile(r"\b(?:rate|ratio|expected|percent|share|risk|%|ess|sample size|weight|score|auroc|"
                              r"elpd|parameters|draws|days|hours|years|age|mean|median|sd)\b", re.I)
TOTAL_NAMES = re.compile(r"^(?:overall|total|all|all patients)$", re.I)
SUMMARY_SUFFIX = re.compile(r", (?:n \(%\)|mean \(SD\)|median \[Q1, Q3\])$")


def _cell(text: str, threshold: int):
    "('shown', n, percent-text) | ('masked', None, bound) | ('hidden', None, None) | None (not a count)."
    text = _clean(text)
    if text in HIDDEN or text.lower().startswith("not shown"):
        return ("hidden", None, None)
    masked = CELL_MASKED.match(text)
    if masked and _int(masked.group(1)) == threshold:
        return ("masked", None, None if masked.group(3) is None else (masked.group(2), masked.group(3)))
    shown = CELL_COUNT.match(text)
    if shown:
        return ("shown", _int(shown.group(1)), shown.group(2))
    return None


def _count_columns(table: Table, threshold: int) -> set:
    "Columns of counts: a count header, or a column that masks a count; never a column of rates or ratios."
    header, body = table.rows[0], table.rows[1:]
    columns = set()
    for j, name in enumerate(header):
        cells = [_cell(row[j], threshold) for row in body if j < len(row)]
        if j == 0 or not any(cells):
            continue
        if NOT_COUNT_HEADER.search(name) and not any(c and c[0] == "masked" for c in cells):
            continue
        percent = any(c and c[0] == "shown" and c[2] is not None for c in cells)
        if COUNT_HEADER.search(name) or any(c and c[0] == "masked" for c in cells) or percent:
            columns.add(j)
    return columns


def _is_table_one(table: Table) -> bool:
    labels = [row[0] for row in table.rows[1:]]
    return bool(labels) and labels[0] == "n" and any(TOTAL_NAMES.match(h) for h in table.rows[0][1:])


def _small_cells(table: Table, threshold: int) -> list[tuple[int, int, str]]:
    "(row, column, text) of every count cell from 1 to threshold - 1."
    found = []
    columns = _count_columns(table, threshold)
    table_one = _is_table_one(table)
    for i, row in enumerate(table.rows[1:], start=1):
        label = row[0] if row else ""
        count_row = table_one or label in ("n", "N") or SUMMARY_SUFFIX.search(label) or label.startswith("Missing")
        for j, text in enumerate(row):
            cell = _cell(text, threshold)
            if cell is None or j == 0:
                continue
            kind, value, percent = cell
            if kind == "masked" and percent is not None and not percent[0]:
                found.append((i, j, f"{text} (a masked count with its exact percentage)"))
            if kind != "shown" or not 1 <= value < threshold:
                continue
            if table_one and label.endswith((", mean (SD)", ", median [Q1, Q3]")):
                continue
            if j in columns or percent is not None or count_row:
                found.append((i, j, text))
    return found


# --- sums a reader knows ------------------------------------------------------------------------

class System:
    """Cells (shown numbers, masked counts in 1..threshold-1, hidden or never-shown counts >= 0) and the
    sums between them; `pinned()` gives the masked or never-shown cells that the sums pin to one whole
    number from 1 to threshold - 1 (by linear programming: the lowest and highest value each can take)."""

    def __init__(self, threshold: int):
        self.threshold, self.cells, self.equations, self.labels = threshold, {}, [], {}

    def add(self, key, kind: str, value=None, label: str = ""):
        if key not in self.cells or self.cells[key][0] == "free":
            self.cells[key] = (kind, value)
        self.labels.setdefault(key, label)
        return key

    def equal(self, plus: list, minus: list, slack: float = 0.0):
        "sum(plus) == sum(minus) (within `slack`)."
        self.equations.append(({**{k: 0 for k in minus}, **{k: 0 for k in plus}}, plus, minus, slack))

    def pinned(self) -> dict:
        from scipy.optimize import linprog

        unknown = [k for k, (kind, _) in self.cells.items() if kind != "shown"]
        column = {k: j for j, k in enumerate(unknown)}
        a_eq, b_eq, a_ub, b_ub = [], [], [], []
        for _, plus, minus, slack in self.equations:
            row, total = np.zeros(len(unknown)), 0.0
            for keys, sign in ((plus, 1.0), (minus, -1.0)):
                for key in keys:
                    kind, value = self.cells[key]
                    if kind == "shown":
                        total -= sign * value
                    else:
                        row[column[key]] += sign
            if not row.any():
                continue
            if slack:
                a_ub += [row, -row]
                b_ub += [total + slack, -total + slack]
            else:
                a_eq.append(row)
                b_eq.append(total)
        if not unknown or not (a_eq or a_ub):
            return {}
        bounds = [(1, self.threshold - 1) if self.cells[k][0] == "masked" else (0, None) for k in unknown]
        arguments = {"A_eq": np.array(a_eq) if a_eq else None, "b_eq": b_eq or None,
                     "A_ub": np.array(a_ub) if a_ub else None, "b_ub": b_ub or None, "bounds": bounds,
                     "method": "highs"}
        probe = linprog(np.zeros(len(unknown)), **arguments)
        if probe.status != 0:
            return {}   # the shown numbers do not add up as assumed: not a sum the reader can use
        found = {}
        touched = {k for equation in self.equations for k in equation[0]}
        for key in unknown:
            if key not in touched:
                continue
            ends = []
            for sign in (1.0, -1.0):
                objective = np.zeros(len(unknown))
                objective[column[key]] = sign
                fit = linprog(objective, **arguments)
                ends.append(sign * fit.fun if fit.status == 0 else math.nan)
            low, high = ends
            if math.isnan(low) or math.isnan(high):
                continue
            slack = any(e[3] for e in self.equations if key in e[0])
            width = high - low
            whole = math.ceil(low - 1e-6) if math.floor(high + 1e-6) == math.ceil(low - 1e-6) else None
            if whole is not None or (slack and width < 1.0):
                value = whole if whole is not None else round((low + high) / 2, 1)
                if 1 <= value <= self.threshold - 1 + 1e-9 and (self.cells[key][0] == "masked" or value >= 1):
                    found[key] = value
        return found


def _table_system(table: Table, threshold: int, page_totals: dict) -> System | None:
    "The sums a reader knows in one table, or None for a table without counts."
    header = table.rows[0]
    body = table.rows[1:]
    system = System(threshold)
    exact = True

    def cell_key(i, j):
        text = body[i][j] if j < len(body[i]) else ""
        cell = _cell(text, threshold)
        key = ("cell", id(table), i, j)
        name = body[i][0]
        if name.startswith("Missing"):   # which variable's missing values
            owner = next((body[k][0] for k in range(i - 1, -1, -1) if SUMMARY_SUFFIX.search(body[k][0])
                          and not body[k][0].startswith("Missing")), "")
            name = f"{owner} / {name}" if owner else name
        label = f"row {name!r}, column {header[j]!r}"
        if cell is None:
            return None
        kind, value, _ = cell
        return system.add(key, {"shown": "shown", "masked": "masked", "hidden": "free"}[kind], value, label)

    names = [h.strip().lower() for h in header]
    if _is_table_one(table):
        groups = [j for j in range(1, len(header)) if not re.match(r"^(smd|p-value|p)$", names[j])]
        total = next(j for j in groups if TOTAL_NAMES.match(header[j]))
        parts = [j for j in groups if j != total]
        # is it weighted? weighted counts add up only to within rounding
        size_keys = {j: cell_key(0, j) for j in groups}
        sizes = {j: system.cells[k][1] if k and system.cells[k][0] == "shown" else None for j, k in size_keys.items()}
        if parts and all(sizes[j] is not None for j in groups) and sizes[total] != sum(sizes[j] for j in parts):
            exact = False
        slack = 0.0 if exact else 0.5 * (len(groups) + 1)
        if parts and all(size_keys.values()):
            system.equal([size_keys[total]], [size_keys[j] for j in parts], slack)
        i = 1
        while i < len(body):
            label = body[i][0]
            cells = [body[i][j] for j in groups]
            if label.endswith(", n (%)") and all(c == "" for c in cells):   # a categorical variable's levels
                rows, i = [], i + 1
                while i < len(body) and not SUMMARY_SUFFIX.search(body[i][0]):
                    rows.append(i)
                    i += 1
                if i < len(body) and body[i][0].startswith("Missing"):
                    rows.append(i)
                    i += 1
                unseen = False
            elif label.endswith(", n (%)"):   # a binary variable: its level 0 is a count never shown
                rows, i = [i], i + 1
                if i < len(body) and body[i][0].startswith("Missing"):
                    rows.append(i)
                    i += 1
                unseen = True
            else:   # a continuous variable: its missing values are a count, in no sum of the column
                i += 1
                if i < len(body) and body[i][0].startswith("Missing"):
                    for j in groups:
                        cell_key(i, j)
                    keys = [cell_key(i, j) for j in groups]
                    if parts and all(keys):
                        system.equal([keys[groups.index(total)]], [k for j, k in zip(groups, keys) if j != total])
                    # another table of the page (the cleaning table) shows this variable's patients without a value
                    elsewhere = next((n for name, n in page_totals.get("missing", {}).items()
                                      if label.lower().startswith(name.lower() + ",")), None)
                    if elsewhere is not None and keys[groups.index(total)]:
                        shown = system.add(("elsewhere", id(table), i), "shown", elsewhere, "")
                        system.equal([keys[groups.index(total)]], [shown])
                    i += 1
                continue
            # weighted tables show the missing values unweighted: their column sums do not hold
            for j in groups:
                keys = [cell_key(r, j) for r in rows]
                if not all(keys):
                    continue
                if unseen:
                    keys.append(system.add(("unseen", id(table), rows[0], j), "free", None,
                                           f"row {body[rows[0]][0]!r} (level 0, not shown), column {header[j]!r}"))
                if size_keys.get(j) and (exact or not any(body[r][0].startswith("Missing") for r in rows)):
                    system.equal(keys, [size_keys[j]], slack)
            for r in rows:
                keys = [cell_key(r, j) for j in groups]
                if parts and all(keys):
                    system.equal([keys[groups.index(total)]], [k for j, k in zip(groups, keys) if j != total],
                                 0.0 if exact or body[r][0].startswith("Missing") else slack)
            if unseen and parts:
                keys = [("unseen", id(table), rows[0], j) for j in groups]
                if all(k in system.cells for k in keys):
                    system.equal([keys[groups.index(total)]], [k for j, k in zip(groups, keys) if j != total], slack)
        return system
    columns = sorted(_count_columns(table, threshold))
    if not columns:
        return None
    # a flow: what remains before a step, less what it removes, is what remains after it
    removed = [j for j in columns if re.search(r"removed|excluded", names[j])]
    if removed:
        remaining = [j for j in columns if j not in removed]
        if remaining:
            r, x = remaining[0], removed[0]
            for i in range(1, len(body)):
                before, out, after = cell_key(i - 1, r), cell_key(i, x), cell_key(i, r)
                if before and out and after:
                    system.equal([before], [out, after])
        return system
    # per-level tables (subgroups, groups): the levels of each subgroup add up to the same totals; each
    # level's patients are its events and its patients without the event
    subgroup = next((j for j, name in enumerate(names) if name == "subgroup"), None)
    patients = next((j for j in columns if re.fullmatch(r"(?:n|patients|persons|people|stays|admissions)", names[j])), None)
    events = [j for j in columns if j != patients]
    totals = {}
    for j in columns:
        totals[j] = system.add(("total", id(table), j), "free", None, f"the total of column {header[j]!r}")
    if patients is not None and "patients" in page_totals:
        system.add(("total", id(table), patients), "shown", page_totals["patients"])
        system.cells[totals[patients]] = ("shown", page_totals["patients"])
    blocks = {}
    for i, row in enumerate(body):
        if TOTAL_NAMES.match(row[0]) or (len(row) > 1 and TOTAL_NAMES.match(row[1]) and subgroup is not None):
            for j in columns:
                key = cell_key(i, j)
                if key:
                    system.equal([key], [totals[j]])
            continue
        if subgroup is not None and len(row) > 1 and re.search(r"one row each", row[1]):
            for j in columns:   # a long group's summary row: its totals
                key = cell_key(i, j)
                if key:
                    system.equal([key], [totals[j]])
            continue
        blocks.setdefault(row[subgroup] if subgroup is not None else "", []).append(i)
    for rows in blocks.values():
        for j in columns:
            keys = [cell_key(i, j) for i in rows]
            if all(keys):
                system.equal(keys, [totals[j]])
    if patients is not None:
        for i, row in enumerate(body):
            whole = cell_key(i, patients)
            for j in [k for k in events if k == patients + 1][:1]:   # the events beside the patients
                part = cell_key(i, j)
                if whole and part:
                    other = system.add(("unseen", id(table), i, j), "free", None,
                                       f"row {row[0]!r} {row[1] if len(row) > 1 else ''}: {header[patients]} "
                                       f"less {header[j]} (not shown)")
                    system.equal([whole], [part, other])
    return system


def _page_totals(page: Page, threshold: int) -> dict:
    """Totals a page shows that other tables' parts add up to: the patients (Table 1's Overall size), and
    each variable's patients without a value (the cleaning table: Table 1's Overall count of missing values)."""
    totals = {"missing": {}}
    for table in page.tables:
        header = [h.lower() for h in table.rows[0]] if table.rows else []
        if "patients without a value" in header:
            j = header.index("patients without a value")
            for row in table.rows[1:]:
                cell = _cell(row[j], threshold) if j < len(row) else None
                if cell and cell[0] == "shown":
                    totals["missing"][row[0]] = cell[1]
    for table in page.tables:
        if _is_table_one(table) and len(table.rows) > 1:
            header = table.rows[0]
            total = next(j for j in range(1, len(header)) if TOTAL_NAMES.match(header[j]))
            cell = _cell(table.rows[1][total], threshold)
            if cell and cell[0] == "shown":
                totals["patients"] = cell[1]
                break
    return totals


# --- the scan -----------------------------------------------------------------------------------

def scan_page(page: Page, *, threshold: int, forbidden=(), home: str | None = None) -> list[Finding]:
    "The findings of one page."
    findings = []
    for text in page.texts:
        for value, snippet in text_counts(text, threshold):
            findings.append(Finding(page.file, "small count", "text", snippet))
        findings += [Finding(page.file, kind, "text", snippet) for kind, snippet in _privacy(text, forbidden, home)]
    totals = _page_totals(page, threshold)
    for number, table in enumerate(page.tables, start=1):
        if not table.rows:
            continue
        where = f"table {number}" + (f" ({table.caption[:60]})" if table.caption else "")
        header = table.rows[0]
        for i, j, text in _small_cells(table, threshold):
            label = table.rows[i][0] if table.rows[i] else ""
            findings.append(Finding(page.file, "small count", f"{where}, row {label!r}, column {header[j]!r}", text))
        for i, row in enumerate(table.rows):
            for text in row:
                findings += [Finding(page.file, kind, where, snippet) for kind, snippet in _privacy(text, forbidden, home)]
                if len(text) > 30:   # sentences in cells
                    findings += [Finding(page.file, "small count", where, snippet)
                                 for _, snippet in text_counts(text, threshold)]
        if len(table.rows) < 2:
            continue
        system = _table_system(table, threshold, totals)
        if system is None:
            continue
        for key, value in system.pinned().items():
            findings.append(Finding(page.file, "derivable", f"{where}, {system.labels.get(key, key)}",
                                    f"{'masked' if system.cells[key][0] == 'masked' else 'unshown'} count worked "
                                    f"out as {value} from the table's sums"))
    return findings


def scan_outputs(build_dir, *, threshold: int, forbidden=(), home: str | None = None) -> list[Finding]:
    """Every finding in the rendered outputs of the build in `build_dir` (html/**/*.html, *.docx, *.pdf):
    counts from 1 to `threshold - 1` shown or derivable, identifiers (and each string of `forbidden`),
    dates of birth and absolute paths (and the home folder)."""
    import os

    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
        raise ValueError(f"`threshold` must be a whole number >= 2, got {threshold!r}.")
    home = home if home is not None else os.path.expanduser("~")
    pages = read_build(build_dir)
    if not pages:
        raise FileNotFoundError(f"{build_dir}: no rendered output (html/, *.docx, *.pdf) to scan.")
    findings = []
    for page in pages:
        findings += scan_page(page, threshold=threshold, forbidden=forbidden, home=home)
    return list(dict.fromkeys(findings))
