//! Command line: `keapalive-bench [--quick] [--rounds N] [--warm N] [--connections N,N]
//! [--concurrency L] [--rate R] [--json PATH]`.

use std::path::PathBuf;

pub const USAGE: &str = "usage: keapalive-bench [--quick] [--rounds N] [--warm N] \
[--connections N[,N...]] [--concurrency L] [--rate R] [--json PATH]

  --quick          smoke run: 3 cold rounds, 100 warm invocations, 50 connections
  --rounds N       measured cold-start rounds per function (default 20: keap-proxy's and keap-hooks' cold init are judged on medians of at least 20 interleaved runs)
  --warm N         warm invocations (and as many hello-world ones) per warm loop: upsert, proxy, access-token, keap-hooks (default 1000)
  --connections    refresher throughput runs (default 1000,10000)
  --concurrency L  refresher concurrency (default 8, KEAPALIVE_REFRESH_CONCURRENCY's default)
  --rate R         Keap requests per second (default 25: Keap's 1,500 a minute per client id)
  --json PATH      where the results go (default bench-results.json in the workspace root)";

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    pub warmup_rounds: usize,
    pub warm_invocations: usize,
    pub connections: Vec<usize>,
    pub concurrency: usize,
    pub rate_per_sec: u32,
    pub keap_latency_ms: u64,
    pub json: PathBuf,
}

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let args: Vec<String> = args.into_iter().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let root = keapalive_tests::workspace::root();
        let mut options = Self {
            quick,
            rounds: if quick { 3 } else { 20 },
            warmup_rounds: 1,
            warm_invocations: if quick { 100 } else { 1_000 },
            connections: if quick { vec![50] } else { vec![1_000, 10_000] },
            concurrency: 8,
            rate_per_sec: 25,
            keap_latency_ms: 50,
            json: if quick {
                root.join("target/bench-results-quick.json")
            } else {
                root.join("bench-results.json")
            },
        };
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let mut value = || {
                rest.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--quick" => {}
                "--rounds" => options.rounds = number(flag, &value()?)?,
                "--warm" => options.warm_invocations = number(flag, &value()?)?,
                "--connections" => {
                    options.connections = value()?
                        .split(',')
                        .filter(|part| !part.is_empty())
                        .map(|part| number(flag, part))
                        .collect::<Result<_, _>>()?;
                }
                "--concurrency" => options.concurrency = number(flag, &value()?)?,
                "--rate" => options.rate_per_sec = number(flag, &value()?)?,
                "--json" => options.json = PathBuf::from(value()?),
                "--help" | "-h" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if options.rounds == 0 || options.warm_invocations == 0 {
            return Err(format!("--rounds and --warm must be at least 1\n{USAGE}"));
        }
        Ok(options)
    }
}

fn number<T: std::str::FromStr>(flag: &str, raw: &str) -> Result<T, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("{flag}: {raw:?} is not a whole number\n{USAGE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn quick_mode_is_small_and_flags_override() {
        let quick = parse(&["--quick"]).unwrap();
        assert_eq!((quick.rounds, quick.warm_invocations), (3, 100));
        assert_eq!(quick.connections, vec![50]);
        let full = parse(&["--rounds", "12", "--connections", "500,2000"]).unwrap();
        assert_eq!((full.rounds, full.warm_invocations), (12, 1_000));
        assert_eq!(full.connections, vec![500, 2_000]);
        assert!(parse(&["--rounds"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
