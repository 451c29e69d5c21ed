//! The recognizers of words: emails, person names and street addresses.

use std::sync::LazyLock;

use regex::Regex;

use crate::context::{after, before, nearest};
use crate::numbers::Cluster;
use crate::{Kind, Span};

/// `local@domain.tld`.
pub(crate) const EMAIL: &str =
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?-u:\b)";
/// Dictated: `jane dot doe at example dot com`; this finds ` at example dot com`, the local
/// part before it is taken by [`spoken_local_start`].
pub(crate) const SPOKEN_DOMAIN: &str =
    r"(?i) at [a-z0-9-]+(?: dot [a-z0-9-]+)* dot (?:com|net|org|edu|gov|io|co|us|info|biz)(?-u:\b)";

/// One word of a name: `Ana`, `O'Brien`, `McDonald`, `Smith-Jones`, `José`.
const NAME_WORD: &str = r"\p{Lu}\p{Ll}*(?:['’-]?\p{Lu}\p{Ll}+)*";

/// The phrases after which callers and agents say a name.
const TRIGGERS: &str = "my name is|my name's|name is|name's|this is|i am|i'm|speaking with|spoke with|spoke to|speak to|speak with|talking to|talked to|talk to|ask for|asked for|name on the card is|cardholder is|card holder is|account holder is|under the name of|under the name|transfer me to|put me through to|thank you|thanks";

/// Honorifics (case as written).
const TITLES: &str = "Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Mister|Doctor";

/// Common US first names that are not also common words, months, places or brands (no
/// Will, Mark, May, June, Grace, Chase, Austin, Virginia…). A name from this list is a
/// name anywhere in the text, with the capitalised word after it as the surname.
pub const FIRST_NAMES: &[&str] = &[
    "James",
    "John",
    "Robert",
    "Michael",
    "William",
    "David",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Donald",
    "Steven",
    "Paul",
    "Andrew",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "Timothy",
    "Ronald",
    "Edward",
    "Jason",
    "Jeffrey",
    "Ryan",
    "Jacob",
    "Gary",
    "Nicholas",
    "Eric",
    "Jonathan",
    "Stephen",
    "Larry",
    "Justin",
    "Scott",
    "Brandon",
    "Benjamin",
    "Samuel",
    "Gregory",
    "Alexander",
    "Patrick",
    "Raymond",
    "Jack",
    "Dennis",
    "Jerry",
    "Tyler",
    "Aaron",
    "Jose",
    "Adam",
    "Nathan",
    "Henry",
    "Douglas",
    "Zachary",
    "Peter",
    "Kyle",
    "Ethan",
    "Walter",
    "Noah",
    "Jeremy",
    "Christian",
    "Keith",
    "Roger",
    "Terry",
    "Gerald",
    "Harold",
    "Sean",
    "Carl",
    "Arthur",
    "Lawrence",
    "Dylan",
    "Jesse",
    "Bryan",
    "Joe",
    "Jordan",
    "Billy",
    "Bruce",
    "Albert",
    "Willie",
    "Gabriel",
    "Logan",
    "Alan",
    "Juan",
    "Wayne",
    "Elijah",
    "Randy",
    "Roy",
    "Vincent",
    "Ralph",
    "Eugene",
    "Russell",
    "Bobby",
    "Mason",
    "Philip",
    "Louis",
    "Carlos",
    "Luis",
    "Miguel",
    "Mohammed",
    "Ahmed",
    "Wei",
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Margaret",
    "Sandra",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Dorothy",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Rebecca",
    "Sharon",
    "Laura",
    "Cynthia",
    "Kathleen",
    "Amy",
    "Angela",
    "Shirley",
    "Anna",
    "Brenda",
    "Pamela",
    "Emma",
    "Nicole",
    "Helen",
    "Samantha",
    "Katherine",
    "Christine",
    "Debra",
    "Rachel",
    "Carolyn",
    "Janet",
    "Catherine",
    "Maria",
    "Heather",
    "Diane",
    "Ruth",
    "Julie",
    "Olivia",
    "Joyce",
    "Kelly",
    "Christina",
    "Lauren",
    "Joan",
    "Evelyn",
    "Judith",
    "Megan",
    "Cheryl",
    "Andrea",
    "Hannah",
    "Martha",
    "Jacqueline",
    "Gloria",
    "Teresa",
    "Ann",
    "Sara",
    "Madison",
    "Frances",
    "Kathryn",
    "Janice",
    "Jean",
    "Abigail",
    "Alice",
    "Julia",
    "Judy",
    "Sophia",
    "Denise",
    "Amber",
    "Doris",
    "Marilyn",
    "Danielle",
    "Beverly",
    "Isabella",
    "Theresa",
    "Diana",
    "Natalie",
    "Brittany",
    "Charlotte",
    "Marie",
    "Kayla",
    "Alexis",
    "Lori",
    "Ana",
    "Sofia",
    "Lucia",
    "Fatima",
    "Aisha",
    "Mei",
    "Yuki",
    "Priya",
    "Elena",
    "Carmen",
    "Rosa",
];

/// Words that start or end a capitalised run but are not names: greetings, days, months,
/// brands and the words of an organisation's name.
const NOT_NAMES: &[&str] = &[
    "I",
    "A",
    "The",
    "This",
    "That",
    "It",
    "Yes",
    "No",
    "Okay",
    "Ok",
    "Sorry",
    "Sure",
    "Hello",
    "Hi",
    "Hey",
    "Thanks",
    "Thank",
    "Please",
    "Great",
    "Right",
    "Correct",
    "Perfect",
    "Well",
    "So",
    "And",
    "But",
    "Or",
    "Is",
    "Are",
    "Was",
    "My",
    "Your",
    "Our",
    "We",
    "You",
    "He",
    "She",
    "They",
    "Calling",
    "Here",
    "Just",
    "Also",
    "Now",
    "Today",
    "Tomorrow",
    "Yesterday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
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
    "Visa",
    "Mastercard",
    "Amex",
    "American",
    "Express",
    "Discover",
    "Bank",
    "Credit",
    "Union",
    "Insurance",
    "Support",
    "Services",
    "Service",
    "Team",
    "Department",
    "Inc",
    "Corp",
    "Company",
    "Financial",
    "Mobile",
    "Wireless",
    "Energy",
    "Airlines",
    "Pharmacy",
    "Center",
    "Desk",
    "Billing",
    "Customer",
    "Account",
    "Agent",
    "Caller",
    "Manager",
    "Supervisor",
    "Sir",
    "Madam",
    "Maam",
    "Ma'am",
    "Everyone",
    "Again",
    "Street",
    "Avenue",
    "Road",
    "Ok",
    "Order",
    "Card",
    "Number",
    "Security",
    "Social",
    "Phone",
    "Email",
    "Mr",
    "Mrs",
    "Ms",
    "Dr",
    "SSN",
    "CVV",
    "Zip",
    "Apt",
    "Suite",
    "Goodbye",
    "Bye",
    "English",
    "Spanish",
    "Acme",
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Globex",
];

const STATES: &str = "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY";

const STREET_SUFFIXES: &str = "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Loop|Alley|Crescent|Plaza|Pike";

fn street() -> String {
    format!(
        r"(?-u:\b)[0-9]{{1,6}}[A-Za-z]?[ \t]+(?:(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?[ \t]+)?(?:(?:\p{{Lu}}\p{{Ll}}+|[0-9]{{1,3}}(?:st|nd|rd|th))[ \t]+){{1,3}}(?:{STREET_SUFFIXES})(?-u:\b)\.?(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|\#)\.?[ \t]*\#?[0-9A-Za-z-]{{1,6}}(?-u:\b))?(?:,?[ \t]+\p{{Lu}}\p{{Ll}}+(?:[ \t]+\p{{Lu}}\p{{Ll}}+){{0,2}},?[ \t]+(?:{STATES})(?-u:\b)(?:[ \t]+[0-9]{{5}}(?:-[0-9]{{4}})?(?-u:\b))?)?"
    )
}

/// `City, ST ` right before a ZIP code (matched on the text that ends at the ZIP).
fn city_state() -> String {
    format!(
        r"(?-u:\b)\p{{Lu}}\p{{Ll}}+(?:[ \t]+\p{{Lu}}\p{{Ll}}+){{0,2}},[ \t]+(?:{STATES})[ \t]+\z"
    )
}

/// Words that make a five-digit number a ZIP code.
const ZIP_WORDS: &[&str] = &["zip", "zip code", "zipcode", "postal code", "post code"];
const PO_BOX: &str = r"(?i:(?-u:\b)p\.?[ ]?o\.?[ \t]+box[ \t]+[0-9]{1,6}(?-u:\b))";

/// How far past a trigger or a house number a name or street is looked for, in bytes.
const REACH: usize = 160;

/// The compiled word recognizers.
#[derive(Debug)]
pub(crate) struct Words {
    email: Regex,
    spoken_domain: Regex,
    trigger: Regex,
    title: Regex,
    name_run: Regex,
    listed_name: Regex,
    street: Regex,
    city_state: Regex,
    po_box: Regex,
}

impl Words {
    pub(crate) fn new() -> Result<Words, regex::Error> {
        let name_run = format!(r"{NAME_WORD}(?:[ \t]+(?:\p{{Lu}}\.[ \t]+)?{NAME_WORD}){{0,2}}");
        let first = FIRST_NAMES.join("|");
        Ok(Words {
            email: Regex::new(EMAIL)?,
            spoken_domain: Regex::new(SPOKEN_DOMAIN)?,
            trigger: Regex::new(&format!(r"(?i:(?-u:\b)(?:{TRIGGERS}))[ \t]*,?[ \t]+"))?,
            title: Regex::new(&format!(r"(?-u:\b)(?:{TITLES})\.?[ \t]+"))?,
            name_run: Regex::new(&format!(r"\A{name_run}"))?,
            listed_name: Regex::new(&format!(
                r"(?-u:\b)(?:{first})(?-u:\b)(?:[ \t]+(?:\p{{Lu}}\.[ \t]+)?{NAME_WORD})?"
            ))?,
            street: Regex::new(&format!(r"\A(?:{})", street()))?,
            city_state: Regex::new(&city_state())?,
            po_box: Regex::new(PO_BOX)?,
        })
    }

    /// The recognizers that start at a number: street addresses at a house number, ZIP
    /// codes (after `City, ST`, or after words that say so).
    pub(crate) fn on_cluster(&self, text: &str, c: &Cluster, out: &mut Vec<Span>) {
        let b = text.as_bytes();
        let before_alnum = c.start > 0 && b.get(c.start - 1).is_some_and(u8::is_ascii_alphanumeric);
        if before_alnum {
            return;
        }
        // A house number: up to six digits, then (a letter and) a space.
        if c.first_run <= 6 {
            // The house number, an optional letter, spaces, then a capital or a digit (`5th`).
            let mut i = c.start + c.first_run;
            if b.get(i).is_some_and(u8::is_ascii_alphabetic) {
                i += 1;
            }
            let spaced = matches!(b.get(i), Some(b' ' | b'\t'));
            while matches!(b.get(i), Some(b' ' | b'\t')) {
                i += 1;
            }
            let word = b
                .get(i)
                .is_some_and(|x| x.is_ascii_uppercase() || x.is_ascii_digit() || *x >= 0x80);
            if spaced && word {
                if let Some(m) = self.street.find(after(text, c.start, REACH)) {
                    out.push(Span::new(Kind::Address, c.start, c.start + m.end()));
                }
            }
        }
        let zip_shaped = c.digits == 5 && c.end - c.start == 5
            || c.digits == 9 && c.end - c.start == 10 && b.get(c.start + 5) == Some(&b'-');
        if zip_shaped && !b.get(c.end).is_some_and(u8::is_ascii_alphanumeric) {
            let window = before(text, c.start, 64);
            if let Some(m) = self.city_state.find(window) {
                let from = c.start - window.len() + m.start();
                out.push(Span::new(Kind::Address, from, c.end));
            } else {
                let near = before(text, c.start, 24);
                let near = match near.rfind(|ch: char| ch.is_ascii_digit()) {
                    Some(i) => near.get(i + 1..).unwrap_or(""),
                    None => near,
                };
                if nearest(near, ZIP_WORDS).is_some() {
                    out.push(Span::new(Kind::Address, c.start, c.end));
                }
            }
        }
    }

    /// The recognizers of words.
    pub(crate) fn find_rest(&self, text: &str, out: &mut Vec<Span>) {
        for m in self.email.find_iter(text) {
            out.push(Span::new(Kind::Email, m.start(), m.end()));
        }
        for m in self.spoken_domain.find_iter(text) {
            if let Some(start) = spoken_local_start(text, m.start()) {
                out.push(Span::new(Kind::Email, start, m.end()));
            }
        }
        for (re, words) in [(&self.trigger, 3), (&self.title, 2)] {
            for t in re.find_iter(text) {
                if let Some(m) = self.name_run.find(after(text, t.end(), REACH)) {
                    let (s, e) = (t.end(), t.end() + m.end());
                    push_name(text, s, cut_words(text, s, e, words), out);
                }
            }
        }
        for m in self.listed_name.find_iter(text) {
            push_name(text, m.start(), m.end(), out);
        }
        for m in self.po_box.find_iter(text) {
            out.push(Span::new(Kind::Address, m.start(), m.end()));
        }
    }
}

/// The end of the first `n` words of `text[start..end]`.
fn cut_words(text: &str, start: usize, end: usize, n: usize) -> usize {
    let Some(run) = text.get(start..end) else {
        return end;
    };
    let mut seen = 0;
    let mut in_word = false;
    for (i, ch) in run.char_indices() {
        let space = ch == ' ' || ch == '\t';
        if space && in_word {
            seen += 1;
            if seen == n {
                return start + i;
            }
        }
        in_word = !space;
    }
    end
}

/// The start of a dictated email's local part that ends at `at` (the space before `at`):
/// one word, or words joined by ` dot `, ` underscore `, ` dash `.
fn spoken_local_start(text: &str, at: usize) -> Option<usize> {
    let b = text.as_bytes();
    let word_start = |end: usize| {
        let mut i = end;
        while i > 0 && b.get(i - 1).is_some_and(u8::is_ascii_alphanumeric) {
            i -= 1;
        }
        (i < end).then_some(i)
    };
    let mut start = word_start(at)?;
    loop {
        let head = text.get(..start)?;
        let joined = [" dot ", " underscore ", " dash "].iter().find(|j| {
            head.len() >= j.len()
                && head
                    .get(head.len() - j.len()..)
                    .is_some_and(|t| t.eq_ignore_ascii_case(j))
        });
        let Some(j) = joined else { break };
        match word_start(start - j.len()) {
            Some(s) => start = s,
            None => break,
        }
    }
    Some(start)
}

/// The words of [`NOT_NAMES`], lower-cased and sorted, for a binary search.
static NOT_NAMES_LOWER: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut v: Vec<Vec<u8>> = NOT_NAMES
        .iter()
        .map(|n| n.as_bytes().to_ascii_lowercase())
        .collect();
    v.sort();
    v.dedup();
    v
});

/// `w` is one of [`NOT_NAMES`], ASCII case-insensitively.
fn is_not_name(w: &str) -> bool {
    let mut buf = [0u8; 16];
    let Some(lower) = buf.get_mut(..w.len()) else {
        return false; // longer than every word of the list
    };
    for (d, s) in lower.iter_mut().zip(w.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    let lower: &[u8] = lower;
    NOT_NAMES_LOWER
        .binary_search_by(|n| n.as_slice().cmp(lower))
        .is_ok()
}

/// A run of capitalised words as a name: words that are not names are cut from its ends;
/// a run that holds an organisation's word, or nothing is left, is no name.
fn push_name(text: &str, start: usize, end: usize, out: &mut Vec<Span>) {
    let Some(run) = text.get(start..end) else {
        return;
    };
    // Words with their byte offsets in the run (a middle initial `Q.` is a word too).
    let words: Vec<(usize, &str)> = run
        .split([' ', '\t'])
        .scan(0usize, |pos, w| {
            let at = *pos;
            *pos += w.len() + 1;
            Some((at, w))
        })
        .filter(|(_, w)| !w.is_empty())
        .collect();
    let Some(first) = words.iter().position(|(_, w)| !is_not_name(w)) else {
        return;
    };
    if first != 0 {
        return;
    }
    let last = words.iter().take_while(|(_, w)| !is_not_name(w)).count();
    let kept = &words[..last];
    let (Some((_, w0)), Some((at_last, w_last))) = (kept.first(), kept.last()) else {
        return;
    };
    if w0.chars().count() < 2 {
        return;
    }
    out.push(Span::new(Kind::Name, start, start + at_last + w_last.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_kinds as kinds;

    #[test]
    fn not_names_are_looked_up_case_insensitively() {
        for n in NOT_NAMES {
            assert!(n.len() <= 16, "{n} is longer than the lookup buffer");
            assert!(
                is_not_name(n) && is_not_name(&n.to_ascii_uppercase()),
                "{n}"
            );
        }
        assert!(!is_not_name("Priya"));
        assert!(!is_not_name("Supervisorsssssssss"));
    }

    #[test]
    fn emails_written_and_dictated() {
        assert_eq!(
            kinds("write to jane.doe+bills@mail.example.com."),
            vec![(Kind::Email, "jane.doe+bills@mail.example.com".into())]
        );
        assert_eq!(
            kinds("it's jdoe at example dot com"),
            vec![(Kind::Email, "jdoe at example dot com".into())]
        );
        assert!(kinds("meet me at noon").is_empty());
    }

    #[test]
    fn names_after_triggers_titles_and_first_names() {
        assert_eq!(
            kinds("my name is Priya Raman and"),
            vec![(Kind::Name, "Priya Raman".into())]
        );
        assert!(kinds("this is Tuesday").is_empty());
        assert!(kinds("This is Acme Bank calling").is_empty());
        assert_eq!(kinds("ask Dr. Okafor"), vec![(Kind::Name, "Okafor".into())]);
        assert_eq!(
            kinds("thanks, Sean O'Brien."),
            vec![(Kind::Name, "Sean O'Brien".into())]
        );
        assert!(kinds("the frank answer").is_empty());
    }

    #[test]
    fn street_addresses_and_zips() {
        assert_eq!(
            kinds("I live at 1234 N Oak Tree Ln, Apt 5B, Springfield, IL 62704 now"),
            vec![(
                Kind::Address,
                "1234 N Oak Tree Ln, Apt 5B, Springfield, IL 62704".into()
            )]
        );
        assert_eq!(
            kinds("ship to 77 5th Avenue please"),
            vec![(Kind::Address, "77 5th Avenue".into())]
        );
        assert_eq!(
            kinds("zip code is 94107"),
            vec![(Kind::Address, "94107".into())]
        );
        assert!(kinds("I ordered 3 Large Boxes").is_empty());
        assert!(kinds("it was 94107 units").is_empty());
    }
}
