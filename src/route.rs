//! Route table: a request goes to the route with the longest matching path
//! prefix. (Model-based matching comes with OpenAI body inspection.)

use crate::config::RouteConfig;

pub struct RouteTable {
    /// Indices into the route list, longest prefix first.
    by_prefix: Vec<(String, usize)>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self::from_prefixes(routes.iter().map(|r| r.path_prefix.as_str()))
    }

    fn from_prefixes<'a>(prefixes: impl Iterator<Item = &'a str>) -> Self {
        let mut by_prefix: Vec<(String, usize)> = prefixes
            .enumerate()
            .map(|(i, p)| (p.to_string(), i))
            .collect();
        // Stable sort keeps config order among equal prefixes.
        by_prefix.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        RouteTable { by_prefix }
    }

    /// Index of the route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<usize> {
        self.by_prefix
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, i)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefixes: &[&str]) -> RouteTable {
        RouteTable::from_prefixes(prefixes.iter().copied())
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&["/", "/v1/", "/v1/embeddings"]);
        assert_eq!(t.find("/v1/embeddings"), Some(2));
        assert_eq!(t.find("/v1/chat/completions"), Some(1));
        assert_eq!(t.find("/health"), Some(0));
    }

    #[test]
    fn no_match() {
        let t = table(&["/v1/"]);
        assert_eq!(t.find("/v2/x"), None);
        assert_eq!(t.find("/v1"), None);
    }
}
