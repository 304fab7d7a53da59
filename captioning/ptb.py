"""A pure-Python port of the official COCO scorer's tokenizer (Stanford PTBTokenizer, as pycocoevalcap runs it).

The official pipeline (pycocoevalcap/tokenizer/ptbtokenizer.py, run by COCOEvalCap before every metric)
writes the captions of one call to a temporary file, one per line (a newline inside a caption becomes a
space), runs the Java Stanford CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase` on it, and then,
in Python, splits each output line with `line.rstrip().split(" ")` and drops the tokens in its
PUNCTUATIONS list. That list holds "-LRB-" but the tokens are already lower case, so brackets survive as
"-lrb-", "-rrb-", "-lsb-", ...

`tokenize` gives the same tokens in pure Python (about 20 us a caption, no Java). The Java tokenizer is
a JFlex lexer: at each position the longest match among its rules wins (ties: the earlier rule), a rule
may look at trailing context it does not consume, and the matched text is then normalised. `_RULES`
lists, in the Java order, the rules that fire on caption-like text, each with its normalisation, and
`java_tokens` runs the same longest-match loop. What they do (each checked against the jar):
- clitics split off: "dog's" -> dog 's, "can't" -> ca n't, "I'm" -> i 'm, "cannot" -> can not,
  "gonna" -> gon na; but "o'clock", "ma'am", "'90s", "'n'", "y'" ("y'all") stay one token;
- hyphens, digits and inner periods stay inside words ("t-shirt", "10-year-old", "runs.another",
  "3.5", "12:30", "1,000"), but "=" and a leading "-" are tokens of their own ("rif = ding");
- abbreviations keep their period ("st.", "mr.", "d.c.", "u.s.", a single letter "p."), except a
  single letter before a sentence start ("E. The end" -> e); the word lists are the jar's;
- quotes (", ', ``, '', curly ones) become PTB quotes and are dropped; "(" -> -lrb-, "[" -> -lsb-,
  "{" -> -lcb-; ½ -> 1/2, € -> $, £ -> #, ¢ -> cents; "—" and "---" -> "--" (dropped);
- "3 1/2" and phone numbers are one token with a no-break space inside (which the official BLEU, splitting
  on any whitespace, counts as two words); URLs, e-mails, file names, @names, #tags, smileys stay whole;
- characters the lexer does not know (emoji, letters newer than its Unicode 6 tables) are deleted.
A caption is tokenized as if followed by a newline, as all but the last line of the official file are.
The next line matters only in one case: a caption ending in a single letter and a period ("the letter
E.") loses the period there when the next caption starts with "A ", "The ", ... ; here it keeps it.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator


PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])  # pycocoevalcap's list, verbatim


def _class_of(predicate: Callable[[str], bool]) -> str:
    """Body of a regex character class holding the BMP characters that satisfy `predicate`."""
    parts, start = [], None
    for code in range(0x10001):
        if code < 0x10000 and predicate(chr(code)):
            start = code if start is None else start
        elif start is not None:
            a, b = re.escape(chr(start)), re.escape(chr(code - 1))
            parts.append(a if start == code - 1 else f"{a}-{b}")
            start = None
    return "".join(parts)


def _ci(words: str) -> str:
    """JFlex's %caseless: letters outside [...] match either case; classes stay as written."""
    out, in_class = [], False
    for i, ch in enumerate(words):
        in_class = (in_class or ch == "[") and not (in_class and ch == "]")
        caseless = ch.isalpha() and not in_class and words[i - 1:i] != "\\"
        out.append(f"[{ch.lower()}{ch.upper()}]" if caseless else ch)
    return "".join(out)


# Letters and digits as Java sees them: Unicode's (the jar's tables stop at Unicode 6, so ~450 rare
# letters added since count here but are deleted there), plus the extra letter ranges of its lexer.
_LB = _class_of(str.isalpha) + (
    "\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF"
    "\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1"
    "\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F"
    "\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E"
    "\u0951-\u0955\u0962\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3"
    "\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD"
    "\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD")
_DB = _class_of(str.isdecimal)
L, D, AN = f"[{_LB}]", f"[{_DB}]", f"[{_LB}{_DB}]"
SPACE = "[ \t\u00A0\u2000-\u200A\u3000]"
SPACENL = "[ \t\u00A0\u2000-\u200A\u3000\n\r\u2028\u2029\u000B\u000C\u0085]"
APOS, APOSETC = "['\u0092\u2019]", "['\u0092\u2019`\u0091\u2018\u201B]"
NUM_SEP = rf"{D}*(?:[.:,\u00AD\u066B\u066C]{D}+)+"  # 3.5, 12:30, 1,000, .5
NUMBER = rf"[-+]?(?:{NUM_SEP}|{D}+)"
WORD = rf"{L}{AN}*(?:[.!?]{L}{AN}*)*"
REDAUX = APOS + _ci("(?:[msdMSD]|re|ve|ll)")
SREDAUX = _ci("n") + APOSETC + _ci("t")
ACRO = r"[A-Za-z](?:\.[A-Za-z])*"
THING = rf"(?:[dDoOlL]{APOSETC}{AN})?{AN}+(?:[-_\u058A\u2010\u2011](?:[dDoOlL]{APOSETC}{AN})?{AN}+)*"
HTHING = r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z](?:\.[A-Za-z])+\.|[A-Za-z0-9\u00AD]+))+"
THINGA = r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"  # AT&T, Q&A (upper case only: "black&white" splits)
ABBREV1 = _ci(  # keep their period and win over a word: "Sr.r" -> sr. r (Java looks 2 chars ahead)
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec|Mon|Tues?|Wed|Thu|Thurs|Fri"
    "|Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich"
    "|Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo|Inc|Cos?|Corp"
    "|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq|Jr|Sr|Bros|(?:Ed|Ph)\\.D|Blvd|Rd"
    "|Esq|etc|al|seq|Bldg")
ABBREV2 = _ci(  # keep their period
    "Dept|Invt|Elec|Natl|M[ft]g|Ph|Ft|Mrs?|Ms|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm"
    "|Rev|Maj|Sgt|Cpl|Pvt|Mt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Adj|Adv|Asst"
    "|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc|vs|v|Alex|Wm|Jos|Cie|cf|TREAS|a\\.k\\.a")
ABBREV3 = _ci("ca|figs?|prop|nos?|art|pp|op")  # keep their period before a number: "No. 7"
SENT_START = _ci("[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er"
                 "|[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne"
                 "|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]hen|[T]here|[T]hese|[T]hey"
                 "|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou")
SPLIT = _ci("can(?=not)|gon(?=na)|got(?=ta)|lem(?=me)|gim(?=me)|wan(?=na)|'t(?=was|is)")  # ASCII ' only
APOWORD = "|".join([  # words with an apostrophe inside that stay whole (longer alternatives first)
    rf"[A-HJ-XZn]{APOSETC}{L}{{2}}{L}*", rf"{L}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{L}*",
    _ci("cont'd\\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"),
    _ci("(?:Dunkin|somethin|ol)") + APOS, APOS + _ci("(?:cause|till?|em)"), rf"{APOS}[2-9]0" + _ci("s"),
    APOS + _ci("n") + APOS + "?", "[lLdDjJ]" + APOS])
FILE_EXT = _ci("bat|bmp|bz2|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?|jar|java|jpe?g|mov|mp3|pdf|php|pl|png"
               "|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
URLX = " \t\n\f\r\"<>|"  # never inside URLs and e-mails
HOST = rf"www\.(?:[^{URLX}.!?(){{}},]+\.)+[a-zA-Z]{{2,4}}|(?:[^{URLX}`'.!?(){{}},-_$]+\.)+(?:com|net|org|edu)"
MISC_SYMBOLS = (
    "[\u00A6-\u00A9\u00AC\u00AE-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603"
    "\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6-\u07F8\u0964\u0965\u0E4F\u1FBD"
    "\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F"
    "\u2190-\u2BFF\u3001\u3002\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")


def _map(table: dict[str, str]) -> Callable[[str], str]:
    trans = str.maketrans(table)
    return lambda tok: tok.translate(trans)


_QUOTES = _map({"\u0091": "`", "\u2018": "`", "\u201B": "`", "\u2039": "`", "\u0092": "'", "\u2019": "'",
                "\u203A": "'", "\u0093": "``", "\u201C": "``", "\u00AB": "``", "\u0094": "''", "\u201D": "''",
                "\u00BB": "''", '"': "''"})
_NBSP = _map({" ": "\u00A0"})  # a space inside a token becomes a no-break space
_PARENS = _map({"(": "-LRB-", ")": "-RRB-", " ": "\u00A0"})
_BRACKETS = _map({"[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-", "(": "-LRB-", ")": "-RRB-"})
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": "''"}
_AMP = re.compile("&(?:amp|lt|gt|quot);", re.I)


def _entities(tok: str) -> str:
    return _AMP.sub(lambda m: _ENTITIES[m.group().lower()], tok)


def _sentence_final(tok: str) -> str:  # "E." before "The ...": the period ends the sentence
    return tok[:-1] if len(tok) == 2 else tok


# (regex, normalisation) in the Java rule order; a named group `t` is the token, the rest of the match
# is trailing context that counts for the longest match but is not consumed.
_RULES: list[tuple[str, Callable[[str], str] | None]] = [
    (_ci("c\\+\\+|(?:c|f)#"), None),  # C++, C#
    (rf"(?P<t>{SPLIT})" + _ci("(?:not|na|ta|me|was|is)"), None),  # can|not, gon|na, 't|was
    (r"<(?:[!?][A-Za-z\-][^>\r\n]*|/?[A-Za-z][A-Za-z0-9_:.\-]*(?: +[A-Za-z][A-Za-z0-9_:.\-]*"
     r"(?: *= *(?:'[^'\r\n]*'|\"[^\"\r\n]*\"|[A-Za-z][A-Za-z0-9_:.\-]*))?)* */?)>", _NBSP),  # SGML
    (_ci("&(?:MD|mdash|ndash);") + "|[\u0096\u0097\u2013-\u2015]", lambda t: "--"),
    (_ci("&amp;|&lt;|&gt;"), _entities),
    (_ci("&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"), None),
    (rf"(?P<t>{WORD}){REDAUX}", None),  # dog|'s
    (rf"(?P<t>[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*){SREDAUX}", None),  # ca|n't
    (WORD, None),
    (APOWORD, None),
    (rf"(?P<t>{_ci('y')}{APOS}){L}", None),  # y'|all
    (rf"{AN}+(?:\.{AN}+)*\.(?:{FILE_EXT})(?={SPACENL}|[.?!,\"'<()])", None),  # photo.jpg
    (rf"https?://[^{URLX}(){{}}]+[^{URLX}.!?(){{}},\-]", None),
    (rf"(?:{HOST})/[^{URLX}()]+[^{URLX}.!?(){{}},\-]|{HOST}", None),  # www.x.com/path: first try with the path
    (rf"(?:<|&lt;)?[a-zA-Z0-9][^{URLX}(){{}}\u00A0]*@(?:[^{URLX}(){{}}.\u00A0]+\.)*[^{URLX}(){{}}.\u00A0]+"
     "(?:>|&gt;)?", None),  # e-mail
    (rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{L}+", None),  # @name, #tag
    (rf"(?P<t>{REDAUX})[^A-Za-z]", _QUOTES),
    (SREDAUX, _QUOTES),
    (rf"{D}{{1,2}}[-/]{D}{{1,2}}[-/]{D}{{2,4}}", None),  # dates
    (NUMBER, None),
    ("[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)", None),
    (rf"(?:{D}{{1,4}}[- \u00A0])?{D}{{1,4}}(?:\\?/|\u2044){D}{{1,4}}", _NBSP),  # 3 1/2
    ("[\u00BC-\u00BE\u2153-\u215E]", _map({"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4",
                                             "\u2153": "1/3", "\u2154": "2/3"})),
    (_ci("-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\\.D\\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|Cap") + APOS
     + _ci("n|c") + APOS + _ci("est"), _entities),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None),  # and/or
    (r"[A-Z]*\$|#", None),
    ("[\u00A2-\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]",
     _map({"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"})),
    (rf"(?P<t>{ACRO}\.){SPACENL}+(?:{SENT_START}){SPACENL}", _sentence_final),
    (rf"(?P<t>(?:{ABBREV1})\.)[\s\S]{{2}}", None),
    (rf"(?:{ABBREV1}|{ABBREV2}|{ACRO})\.", None),
    (rf"(?P<t>(?:{ABBREV3})\.){SPACE}?{D}", None),
    (rf"(?P<t>{APOS}{D}{D}){SPACENL}", None),  # '90
    (rf"(?P<t>{WORD}\.)[,;:]", None),
    (r"(?:\([0-9]{3}\)[ \u00A0]?|[0-9]{3}[\- \u00A0.])[0-9]{3}[\- \u00A0.][0-9]{4}", _PARENS),  # phones
    (_ci('"|&quot;'), lambda t: "''"),
    (r"(?P<t>[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]])[^A-Za-z0-9]", _PARENS),  # :-) :D
    (r"[\-^x=~<>']_[\-^x=~<>']|\([\-^x=~<>'][_.]?[\-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)", _PARENS),
    ("<<|>>|[+%&\u2030\u2031~^|\\\\<>]", None),
    (r"[()\[\]{}]", _BRACKETS),
    (r"-+", lambda t: "--" if 3 <= len(t) <= 4 else t),
    ("\\.{3,5}|(?:\\.[ \u00A0]){2,4}\\.|[\u0085\u2026]", lambda t: "..."),
    (r"@+|#+|_+|\*+|(?:\\\*){1,3}|[,;:=/]|[?!]+|[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]", None),
    (rf"(?P<t>{HTHING}\.)[,;:]", None),
    (HTHING, None),
    (rf"(?P<t>{THING}\.)[,;:]", None),
    (THING, None),
    (rf"(?P<t>{THINGA}\.)[,;:]", _entities),
    (THINGA, _entities),
    (r"(?P<t>')[A-Za-z][^ \t\n\r\u00A0]", lambda t: "`"),  # opening quote
    (REDAUX, _QUOTES),
    ("''|[`\u2018-\u201F\u0091-\u0094\u2039\u203A\u00AB\u00BB]{1,2}|" + APOS, _QUOTES),
    (MISC_SYMBOLS, None),
    (f"{SPACE}+|{SPACENL}|[\u200B\u200E\u200F\uFEFF]", lambda t: ""),
]
_COMPILED = [(r, "t" in r.groupindex, f) for r, f in ((re.compile(p), f) for p, f in _RULES)]
# Fast path for the common case: blanks; a plain word or a lone punctuation mark before a blank.
_FAST = re.compile(rf"(?:[ \t]{SPACE}*|\n)+|(?P<w>{L}+(?=(?P<p>[.,;:!?])?[ \t\n])|[.,;:!?](?={SPACENL}))")
_ABBREVIATION = re.compile(rf"(?:{ABBREV1}|{ABBREV2}|{ABBREV3}|{ACRO})\.")
_SPLIT_WORDS = {"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"}


def java_tokens(line: str) -> Iterator[str]:
    """The tokens the Java lexer gives for one line: longest match of _RULES at each position."""
    pos, end = 0, len(line)
    while pos < end:
        m = _FAST.match(line, pos)
        w = m and m.group("w")
        if m is not None and (w is None or w.lower() not in _SPLIT_WORDS and (
                m.group("p") != "." or not _ABBREVIATION.fullmatch(w + "."))):
            tok, pos = w, m.end()
        else:
            best, best_len = None, 0
            for regex, has_context, normalise in _COMPILED:
                m = regex.match(line, pos)
                if m is not None and m.end() - pos > best_len:
                    best, best_len = (m, has_context, normalise), m.end() - pos
            if best is None:  # a character the Java lexer does not know: deleted
                pos += 1
                continue
            m, has_context, normalise = best
            tok = m.group("t") if has_context else m.group()
            pos = m.end("t") if has_context else m.end()
            tok = normalise(tok) if normalise is not None else tok
        if tok and (tok := tok.replace("\u00AD", "")):
            yield tok
