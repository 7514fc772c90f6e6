//! Route table: a request goes to a route whose path prefix it starts with
//! and, if the route lists `models`, whose JSON `model` is one of them.
//! Among those, the longest prefix wins, and at equal prefixes a route that
//! names the model wins over one that takes any model.

use crate::config::RouteConfig;

struct Entry {
    prefix: String,
    /// Empty: any model (and no need to look at the body).
    models: Vec<String>,
}

pub struct RouteTable {
    /// Routes in config order.
    entries: Vec<Entry>,
}

/// Why no route was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No route's path prefix matches.
    Path,
    /// Routes match the path, but none serves this model.
    Model(Option<String>),
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> Self {
        RouteTable {
            entries: routes
                .iter()
                .map(|r| Entry {
                    prefix: r.path_prefix.clone(),
                    models: r.models.clone(),
                })
                .collect(),
        }
    }

    /// Some route's prefix matches `path`.
    pub fn path_matches(&self, path: &str) -> bool {
        self.entries.iter().any(|e| path.starts_with(&e.prefix))
    }

    /// Whether choosing among the routes for `path` needs the body's model.
    pub fn needs_model(&self, path: &str) -> bool {
        self.entries
            .iter()
            .any(|e| path.starts_with(&e.prefix) && !e.models.is_empty())
    }

    /// Index of the route for `path` and the body's `model`.
    pub fn find(&self, path: &str, model: Option<&str>) -> Result<usize, NoRoute> {
        let mut best: Option<(usize, usize, bool)> = None; // (index, prefix len, names model)
        let mut path_matched = false;
        for (i, e) in self.entries.iter().enumerate() {
            if !path.starts_with(&e.prefix) {
                continue;
            }
            path_matched = true;
            let names_model = !e.models.is_empty();
            if names_model && !model.is_some_and(|m| e.models.iter().any(|x| x == m)) {
                continue;
            }
            let key = (e.prefix.len(), names_model);
            if best.is_none_or(|(_, len, named)| key > (len, named)) {
                best = Some((i, key.0, key.1));
            }
        }
        match best {
            Some((i, _, _)) => Ok(i),
            None if path_matched => Err(NoRoute::Model(model.map(str::to_owned))),
            None => Err(NoRoute::Path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &[&str])]) -> RouteTable {
        RouteTable {
            entries: routes
                .iter()
                .map(|(p, m)| Entry {
                    prefix: p.to_string(),
                    models: m.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&[("/", &[]), ("/v1/", &[]), ("/v1/embeddings", &[])]);
        assert_eq!(t.find("/v1/embeddings", None), Ok(2));
        assert_eq!(t.find("/v1/chat/completions", None), Ok(1));
        assert_eq!(t.find("/health", None), Ok(0));
        assert!(!t.needs_model("/v1/chat/completions"));
    }

    #[test]
    fn no_match() {
        let t = table(&[("/v1/", &[])]);
        assert_eq!(t.find("/v2/x", None), Err(NoRoute::Path));
        assert_eq!(t.find("/v1", None), Err(NoRoute::Path));
        assert!(!t.path_matches("/v2/x"));
    }

    #[test]
    fn models_pick_among_equal_prefixes() {
        let t = table(&[
            ("/v1/", &["deepseek-r1", "deepseek-v3"]),
            ("/v1/", &["qwen"]),
            ("/v1/", &[]),
        ]);
        assert!(t.needs_model("/v1/chat/completions"));
        assert_eq!(t.find("/v1/chat/completions", Some("deepseek-v3")), Ok(0));
        assert_eq!(t.find("/v1/chat/completions", Some("qwen")), Ok(1));
        assert_eq!(t.find("/v1/chat/completions", Some("llama")), Ok(2));
        assert_eq!(t.find("/v1/chat/completions", None), Ok(2));
    }

    #[test]
    fn an_unknown_model_without_a_catch_all_is_not_found() {
        let t = table(&[("/v1/", &["deepseek-r1"])]);
        assert_eq!(
            t.find("/v1/chat/completions", Some("gpt-9")),
            Err(NoRoute::Model(Some("gpt-9".into())))
        );
        assert_eq!(
            t.find("/v1/chat/completions", None),
            Err(NoRoute::Model(None))
        );
    }

    #[test]
    fn a_shorter_catch_all_takes_models_a_longer_route_does_not_serve() {
        let t = table(&[("/", &[]), ("/v1/chat/", &["a"])]);
        assert_eq!(t.find("/v1/chat/completions", Some("a")), Ok(1));
        assert_eq!(t.find("/v1/chat/completions", Some("b")), Ok(0));
    }
}
