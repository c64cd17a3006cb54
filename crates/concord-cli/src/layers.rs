//! Where each setting of `concord serve` comes from: its default (`Config::default()`,
//! `Deployment::default()`), then the config file (`--config`, TOML), then its `CONCORD_*`
//! environment variable, then its flag; and `--print-config`, which writes the result back as a
//! config file.

use crate::settings::{Deployment, ServeArgs};
use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use concord_server::Config;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// The effective settings of `concord serve`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub deployment: Deployment,
    pub server: Config,
}

/// The defaults as a TOML table: the keys are the settings' ids (flag names in snake_case).
fn defaults() -> toml::Table {
    let mut table = to_table(&Deployment::default());
    table.extend(to_table(&Config::default()));
    table
}

fn to_table(value: &impl Serialize) -> toml::Table {
    toml::Table::try_from(value).expect("the settings serialize as a TOML table")
}

/// `serve`'s command with every default filled in from `defaults()`, so that the defaults are
/// declared only once (in `impl Default`) and `--help` shows them.
pub fn with_defaults(cmd: Command) -> Command {
    let defaults = defaults();
    cmd.mut_args(|arg| match defaults.get(arg.get_id().as_str()) {
        // A list taken as repeated or delimited values (`--allowed-origins a,b`).
        Some(toml::Value::Array(items)) if matches!(arg.get_action(), ArgAction::Append) => {
            let texts: Vec<String> = items.iter().map(flag_text).collect();
            arg.default_values(texts)
        }
        // A list taken as one value (`--retention 'a=max_events:1;b=max_age:1d'`).
        Some(toml::Value::Array(items)) => {
            let texts: Vec<String> = items.iter().map(flag_text).collect();
            arg.default_value(texts.join(";")).required(false)
        }
        Some(value) => arg.default_value(flag_text(value)).required(false),
        None => arg,
    })
}

/// A TOML value as its flag takes it (strings are already in the flag's syntax).
fn flag_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads the settings from `matches` (of the command given by [`with_defaults`]) and, when
/// `--config` or `CONCORD_CONFIG` names one, the config file under them.
pub fn settings(matches: &ArgMatches) -> anyhow::Result<(ServeArgs, Settings)> {
    let args = ServeArgs::from_arg_matches(matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = match &args.config {
        None => Settings {
            deployment: args.deployment.clone(),
            server: args.server.clone(),
        },
        Some(path) => layered(path, &args, matches)?,
    };
    let server = settings.server.with_minimums();
    Ok((
        args,
        Settings {
            deployment: settings.deployment,
            server,
        },
    ))
}

/// The ids (file keys) of the settings `T` declares.
fn ids<T: Args>() -> Vec<String> {
    T::augment_args(Command::new("ids"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .filter(|id| id != "help")
        .collect()
}

/// The file's values over the defaults, then every value given by a variable or a flag over
/// those.
fn layered(path: &Path, args: &ServeArgs, matches: &ArgMatches) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let mut file: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not a valid TOML file", path.display()))?;
    let deployment_ids = ids::<Deployment>();
    let server_ids = ids::<Config>();
    for key in file.keys() {
        if !deployment_ids.contains(key) && !server_ids.contains(key) {
            let hint = if deployment_ids.contains(&key.replace('-', "_"))
                || server_ids.contains(&key.replace('-', "_"))
            {
                format!(" (did you mean `{}`?)", key.replace('-', "_"))
            } else {
                String::new()
            };
            anyhow::bail!(
                "{}: unknown setting `{key}`{hint}; `concord serve --print-config` lists every setting",
                path.display()
            );
        }
    }
    let given = to_table(&args.deployment)
        .into_iter()
        .chain(to_table(&args.server));
    for (id, value) in given {
        if matches!(
            matches.value_source(&id),
            Some(ValueSource::EnvVariable | ValueSource::CommandLine)
        ) {
            file.insert(id, value);
        }
    }
    let (deployment, server): (toml::Table, toml::Table) = file
        .into_iter()
        .partition(|(key, _)| deployment_ids.contains(key));
    Ok(Settings {
        deployment: from_table(deployment, path)?,
        server: from_table(server, path)?,
    })
}

fn from_table<T: DeserializeOwned>(table: toml::Table, path: &Path) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let inner = e.inner().to_string();
        // toml's own "in `key`" line says again what the path says.
        let reason = inner.split("\nin `").next().unwrap_or_default();
        anyhow::anyhow!(
            "{}: bad value for setting `{}`: {reason}",
            path.display(),
            e.path(),
        )
    })
}

/// The settings as a config file (TOML). Secrets are never settings (only the paths of the
/// files that hold them), so there is nothing to redact.
pub fn print(settings: &Settings) -> String {
    let mut table = to_table(&settings.deployment);
    table.extend(to_table(&settings.server));
    format!(
        "# concord serve: effective settings (defaults <- config file <- CONCORD_* <- flags)\n{}",
        toml::to_string(&table).expect("a TOML table prints")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    /// `serve`'s command as the binary builds it, but blind to the environment of the test.
    fn serve_command() -> Command {
        with_defaults(ServeArgs::augment_args(Command::new("serve")))
            .mut_args(|a| a.env(None::<&str>))
    }

    fn parse(argv: &[&str]) -> anyhow::Result<Settings> {
        let matches = serve_command().try_get_matches_from(argv)?;
        Ok(settings(&matches)?.1)
    }

    /// The top-level field names in `{:#?}` of a struct (four spaces, then `name: `).
    fn field_names(pretty: &str) -> Vec<String> {
        pretty
            .lines()
            .filter_map(|l| l.strip_prefix("    "))
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_once(": ").map(|(name, _)| name.to_string()))
            .collect()
    }

    #[test]
    fn every_config_field_has_a_flag_and_an_env_var() {
        let cmd = with_defaults(ServeArgs::augment_args(Command::new("serve")));
        let args: HashMap<String, &clap::Arg> = cmd
            .get_arguments()
            .map(|a| (a.get_id().to_string(), a))
            .collect();
        let fields = field_names(&format!("{:#?}", Config::default()));
        assert!(fields.len() > 50, "{fields:?}");
        let mut envs = HashSet::new();
        for field in &fields {
            // The settings the binary builds the runtime parts from; a field whose flag kept an
            // older name.
            let sources: &[&str] = match field.as_str() {
                "store" => &["data_dir", "memory", "sqlite_sync"],
                "auth" => &["auth", "jwt_secret_file", "jwt_public_key", "jwt_leeway"],
                "admin_key" => &["admin_key_file"],
                "doc_schemas" => &["schema_file"],
                "max_inflight_per_conn" => &["max_inflight"],
                other => &[other],
            };
            for id in sources {
                let arg = args
                    .get(*id)
                    .unwrap_or_else(|| panic!("Config::{field} has no flag `{id}`"));
                assert_eq!(
                    arg.get_long(),
                    Some(id.replace('_', "-").as_str()),
                    "Config::{field}"
                );
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert_eq!(
                    env,
                    Some(format!("CONCORD_{}", id.to_uppercase())),
                    "Config::{field}"
                );
                assert!(envs.insert(env), "{id}: env var used twice");
                assert!(arg.get_help().is_some(), "--{id} has no help");
            }
        }
        // And every other flag is a setting of the binary's own (or the file and printing).
        let deployment = field_names(&format!("{:#?}", Deployment::default()));
        for id in args.keys() {
            assert!(
                fields.iter().any(|f| f == id)
                    || deployment.iter().any(|f| f == id)
                    || ["max_inflight", "config", "print_config", "help"].contains(&id.as_str()),
                "--{id} is no setting"
            );
        }
    }

    #[test]
    fn the_binary_defaults_are_config_default() {
        let s = parse(&["serve"]).unwrap();
        assert_eq!(
            format!("{:#?}", s.server),
            format!("{:#?}", Config::default())
        );
        assert_eq!(
            format!("{:#?}", s.deployment),
            format!("{:#?}", Deployment::default())
        );
        // The defaults the docs promise.
        assert_eq!(s.server.node_id, "n1");
        assert_eq!(s.server.max_conns, 0, "0 = from the open-file limit");
        assert_eq!(s.server.write_timeout, Duration::from_secs(10));
        assert_eq!(s.deployment.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(print(&s), print(&parse(&["serve"]).unwrap()));
    }

    #[test]
    fn old_value_forms_still_parse() {
        let s = parse(&[
            "serve",
            "--write-timeout",
            "15",
            "--presence-interval",
            "250ms",
            "--jwt-leeway",
            "7",
            "--rate-presence-per-conn",
            "12",
            "--room-kinds",
            "chat:*=stream, doc:*=doc",
            "--retention",
            "chat:*=max_events:100,max_age:30d; log:*=max_age:12h",
            "--allowed-origins",
            "https://a.example, ,https://b.example",
            "--max-inflight",
            "0",
        ])
        .unwrap();
        let c = &s.server;
        assert_eq!(c.write_timeout, Duration::from_secs(15));
        assert_eq!(c.presence_interval, Duration::from_millis(250));
        assert_eq!(s.deployment.jwt_leeway, Duration::from_secs(7));
        assert_eq!(c.rate_presence_per_conn.to_string(), "12:24");
        assert_eq!(c.room_kinds.len(), 2);
        assert_eq!(c.retention.len(), 2);
        assert_eq!(
            c.retention[1].max_age,
            Some(Duration::from_secs(12 * 3_600))
        );
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(
            c.max_inflight_per_conn, 1,
            "a smaller value counts as the minimum"
        );
    }

    #[test]
    fn empty_lists_mean_none() {
        let s = parse(&[
            "serve",
            "--retention",
            "",
            "--room-kinds",
            "",
            "--allowed-origins",
            "",
        ])
        .unwrap();
        assert!(s.server.retention.is_empty());
        assert!(s.server.room_kinds.is_empty());
        assert!(s.server.allowed_origins.is_empty());
    }

    fn write_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = write_file(
            "node_id = \"from-file\"\nmax_frame_bytes = 1000\nwrite_timeout = \"20s\"\n\
             sqlite_sync = \"normal\"\nroom_kinds = [\"doc:*=doc\"]\n\
             idle_timeout = 90\nrate_presence_per_conn = 12\n",
        );
        let path = file.path().to_str().unwrap();
        let s = parse(&["serve", "--config", path, "--max-frame-bytes", "2000"]).unwrap();
        assert_eq!(s.server.node_id, "from-file");
        assert_eq!(
            s.server.max_frame_bytes, 2000,
            "the flag wins over the file"
        );
        assert_eq!(s.server.write_timeout, Duration::from_secs(20));
        assert_eq!(s.server.room_kinds.len(), 1);
        assert_eq!(
            s.deployment.sqlite_sync,
            crate::settings::SqliteSync::Normal
        );
        assert_eq!(s.server.max_data_bytes, Config::default().max_data_bytes);
        // Bare integers in the file: seconds, and PER_SEC.
        assert_eq!(s.server.idle_timeout, Duration::from_secs(90));
        assert_eq!(s.server.rate_presence_per_conn.to_string(), "12:24");
        // A flag given with its default value still wins over the file.
        let s = parse(&["serve", "--config", path, "--node-id", "n1"]).unwrap();
        assert_eq!(s.server.node_id, "n1");
    }

    #[test]
    fn bad_values_name_their_flag_or_key() {
        let e = parse(&["serve", "--write-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--write-timeout"), "{e}");
        let e = parse(&["serve", "--max-frame-bytes=1MiB"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-frame-bytes"), "{e}");
        let e = parse(&["serve", "--auth", "basic"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--auth") && e.contains("jwt"), "{e}");
        let e = parse(&["serve", "--room-kinds", "chat:*=table"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--room-kinds"), "{e}");

        let file = write_file("write_timeout = \"soon\"\n");
        let path = file.path().to_str().unwrap();
        let e = parse(&["serve", "--config", path]).unwrap_err().to_string();
        assert!(e.contains("`write_timeout`") && e.contains(path), "{e}");
        let file = write_file("max_frame_bytes = \"big\"\n");
        let path = file.path().to_str().unwrap();
        let e = parse(&["serve", "--config", path]).unwrap_err().to_string();
        assert!(e.contains("`max_frame_bytes`"), "{e}");
        let file = write_file("auth = \"basic\"\n");
        let path = file.path().to_str().unwrap();
        let e = parse(&["serve", "--config", path]).unwrap_err().to_string();
        assert!(e.contains("`auth`"), "{e}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error_naming_the_key() {
        for (text, key) in [
            ("max_frame_byte = 1\n", "`max_frame_byte`"),
            ("max-frame-bytes = 1\n", "did you mean `max_frame_bytes`"),
            ("config = \"other.toml\"\n", "`config`"),
            ("[limits]\nmax_frame_bytes = 1\n", "`limits`"),
        ] {
            let file = write_file(text);
            let e = parse(&["serve", "--config", file.path().to_str().unwrap()])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(key) && e.contains("unknown setting"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn print_config_reads_back_as_the_same_settings() {
        let s = parse(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--memory",
            "--sqlite-sync",
            "normal",
            "--auth",
            "jwt",
            "--jwt-secret-file",
            "/etc/concord/secret",
            "--jwt-leeway",
            "2s",
            "--log-format",
            "json",
            "--node-id",
            "edge-7",
            "--write-timeout",
            "1500ms",
            "--max-inflight",
            "64",
            "--retention-interval",
            "0",
            "--metrics-listen",
            "127.0.0.1:9100",
            "--allowed-origins",
            "https://a.example,https://b.example",
            "--rate-publish-per-room",
            "0",
            "--room-kinds",
            "chat:*=stream,doc:*=doc",
            "--retention",
            "chat:*=max_events:100000,max_age:30d;log:*=max_age:1h30m;all=max_events:5",
            "--doc-max-bytes",
            "4096",
        ])
        .unwrap();
        let printed = print(&s);
        let file = write_file(&printed);
        let back = parse(&["serve", "--config", file.path().to_str().unwrap()]).unwrap();
        assert_eq!(format!("{:#?}", back.server), format!("{:#?}", s.server));
        assert_eq!(
            format!("{:#?}", back.deployment),
            format!("{:#?}", s.deployment)
        );
        assert_eq!(print(&back), printed);
        assert_ne!(
            format!("{:#?}", s.server),
            format!("{:#?}", Config::default()),
            "the settings printed are not the defaults"
        );
    }
}
