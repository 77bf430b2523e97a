//! Issue 16: ZooKeeper membership with SASL DIGEST-MD5 and ACLs, against a real ZooKeeper 3.8
//! that authenticates clients by SASL. The server still accepts unauthenticated sessions (the
//! common set-up, and the harder check): the znodes' ACLs alone must keep every client but the
//! agents' identity from adding, changing or deleting members. One test also runs a server that
//! requires SASL of every session.
//!
//! Topology: a star; ZooKeeper in the core (198.18.x), agents on the nodes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use meshprobe::discovery::layout;
use meshprobe::pb::NodeInfo;
use meshprobe_harness::agent::{AgentConfig, Cluster, HEARTBEAT_PATH, ZK_PORT};
use meshprobe_harness::env::skip;
use meshprobe_harness::services::{
    SaslUser, TempDir, ZkServerAuth, ZooKeeper, wait_until, zookeeper_missing,
};
use meshprobe_harness::topo::Family;
use prost::Message;
use zookeeper_client::{self as zk, Acls, CreateMode};

/// The identity every agent shares.
const AGENT: SaslUser<'static> = ("meshprobe", "agent-secret-3141");
/// Another user the server knows: authenticated, but not an agent.
const OTHER: SaslUser<'static> = ("intruder", "other-secret-2718");
const WRONG_PASSWORD: &str = "not-the-password-1618";
/// Longest wait for something that should follow within a few session set-ups (the agents'
/// session timeout is 4 s, their reconnection backoff at most 5 s). Only stops a hang.
const SAFETY: Duration = Duration::from_secs(20);

fn topology() -> String {
    layout::topology_root(HEARTBEAT_PATH)
}

/// The agents' zone directory (no MESHPROBE_ZONE: the empty zone).
fn zone_dir() -> String {
    layout::zone_path(&topology(), "")
}

/// A lab of `nodes` agents' namespaces with a SASL ZooKeeper in its core, and a dir of
/// password files (`agent.pw` holds the agents' password with a trailing newline, as `echo`
/// writes it; `wrong.pw` a wrong one). `None` (after saying why) when the test must skip.
fn sasl_lab(test: &str, nodes: usize, require_sasl: bool) -> Result<Option<(Cluster, TempDir)>> {
    if let Some(why) = zookeeper_missing() {
        skip(test, &why);
        return Ok(None);
    }
    let Some(mut lab) = Cluster::acquire(test, nodes, Family::V4, false, false)? else {
        return Ok(None);
    };
    let auth = ZkServerAuth {
        sasl_users: [AGENT, OTHER]
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect(),
        require_sasl,
    };
    let core_ip = lab.star.core_ip(lab.family);
    lab.zk = Some(ZooKeeper::start_with(
        lab.star.core(),
        core_ip,
        ZK_PORT,
        &auth,
    )?);
    let secrets = TempDir::new("zk-secrets")?;
    std::fs::write(secrets.path().join("agent.pw"), format!("{}\n", AGENT.1))?;
    std::fs::write(secrets.path().join("wrong.pw"), WRONG_PASSWORD)?;
    Ok(Some((lab, secrets)))
}

/// Node `i`'s settings with the agents' user and the password in `file`.
fn sasl_config(lab: &Cluster, i: usize, file: &Path) -> AgentConfig {
    lab.config(i)
        .env("ZK_SASL_USERNAME", AGENT.0)
        .env("ZK_SASL_PASSWORD_FILE", file.display())
}

/// Waits until agent `a` added node `b` to its peers.
fn wait_peer(lab: &mut Cluster, a: usize, b: usize) -> Result<()> {
    let id = Cluster::node_id(b);
    lab.agent_mut(a)
        .wait_for(SAFETY, |e| {
            e.kind() == "peer_added" && e.v["node_id"] == id.as_str()
        })
        .map(drop)
        .with_context(|| format!("{} never added {id}", Cluster::node_id(a)))
}

/// ACLs of `paths` as `scheme:id:PERMS` lists, read as the agents' user.
fn acls_of(zk: &ZooKeeper, paths: &[String]) -> Result<Vec<(String, String)>> {
    let paths = paths.to_vec();
    zk.session_as(Some(AGENT), "reading ACLs", async move |c| {
        let mut out = Vec::new();
        for p in paths {
            let (acls, _) = c
                .get_acl(&p)
                .await
                .map_err(|e| anyhow::anyhow!("get_acl {p}: {e}"))?;
            let shown: Vec<String> = acls
                .iter()
                .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), a.permission()))
                .collect();
            out.push((p, shown.join(",")));
        }
        Ok(out)
    })
}

/// The index entry paths in our zone directory, read as the agents' user.
fn entries(zk: &ZooKeeper) -> Result<Vec<String>> {
    let dir = zone_dir();
    zk.session_as(Some(AGENT), "listing entries", async move |c| {
        let names = c
            .list_children(&dir)
            .await
            .map_err(|e| anyhow::anyhow!("list {dir}: {e}"))?;
        Ok(names.into_iter().map(|n| format!("{dir}/{n}")).collect())
    })
}

/// Does `path` exist (read as the agents' user)?
fn exists(zk: &ZooKeeper, path: &str) -> Result<bool> {
    let p = path.to_string();
    zk.session_as(Some(AGENT), "stat", async move |c| {
        Ok(c.check_stat(&p)
            .await
            .map_err(|e| anyhow::anyhow!("stat {p}: {e}"))?
            .is_some())
    })
}

/// Tries, as `user` (None: unauthenticated), every way to forge or break the membership of
/// the member registered at `victim` (registration, index entry); returns the attempts that
/// were NOT refused with NoAuth (each with what ZooKeeper answered).
fn forgeries_not_refused(
    zk: &ZooKeeper,
    user: Option<SaslUser<'_>>,
    victim: (&str, &str),
) -> Result<Vec<String>> {
    let (reg, entry) = (victim.0.to_string(), victim.1.to_string());
    let fake = NodeInfo {
        node_id: "fake".into(),
        public_address: "198.18.0.99".into(),
        public_port: 862,
        ..Default::default()
    };
    let fake_reg = layout::registration(HEARTBEAT_PATH, &fake);
    let fake_zone = layout::zone_path(&topology(), "fake-zone");
    zk.session_as(user, "forging members", async move |c| {
        let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
        let eph = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        let data = fake.encode_to_vec();
        let attempts: Vec<(&str, Result<(), zk::Error>)> = vec![
            (
                "create a fake registration",
                c.create(&fake_reg.path, &data, &eph).await.map(drop),
            ),
            (
                "create a fake index entry",
                c.create(&fake_reg.entry, &[], &eph).await.map(drop),
            ),
            (
                "create a zone directory",
                c.create(&fake_zone, &[], &open).await.map(drop),
            ),
            (
                "rewrite an agent's registration",
                c.set_data(&reg, &data, None).await.map(drop),
            ),
            (
                "delete an agent's index entry",
                c.delete(&entry, None).await,
            ),
            ("delete an agent's registration", c.delete(&reg, None).await),
            (
                "open the members directory's ACL",
                c.set_acl(HEARTBEAT_PATH, &Acls::anyone_all(), None)
                    .await
                    .map(drop),
            ),
        ];
        Ok(attempts
            .into_iter()
            .filter(|(_, r)| *r != Err(zk::Error::NoAuth))
            .map(|(what, r)| format!("{what}: {r:?}"))
            .collect())
    })
}

/// Two agents with the shared SASL identity find each other; every znode they created is
/// writable by that identity only (and not even readable by others: ZK_WORLD_READ unset);
/// neither an unauthenticated client nor another SASL user can create, change or delete a
/// member. A third agent with a wrong password logs one clear error, does not register, keeps
/// running, and registers once its password file holds the right password (read at every new
/// session).
#[test]
fn sasl_agents_alone_can_write_membership() -> Result<()> {
    let test = "sasl_agents_alone_can_write_membership";
    let Some((mut lab, secrets)) = sasl_lab(test, 3, false)? else {
        return Ok(());
    };
    let good = secrets.path().join("agent.pw");
    for i in [0, 1] {
        let cfg = sasl_config(&lab, i, &good);
        lab.start_agent_with(i, &cfg)?;
    }
    wait_peer(&mut lab, 0, 1)?;
    wait_peer(&mut lab, 1, 0)?;
    for i in [0, 1] {
        let log = lab.agent(i).stderr_text();
        ensure!(
            log.contains("authenticated by SASL DIGEST-MD5") && !log.contains(AGENT.1),
            "node{i}: no start-up line about the SASL identity, or the password logged:\n{log}"
        );
    }

    // Every znode the agents created: the ancestors, both directories of the index, the
    // registrations and their entries.
    let mut paths: Vec<String> = ["/meshprobe", HEARTBEAT_PATH]
        .iter()
        .map(|s| s.to_string())
        .chain([topology(), zone_dir()])
        .chain((0..2).map(|i| format!("{HEARTBEAT_PATH}/{}", Cluster::node_id(i))))
        .collect();
    let entries = entries(lab.zk())?;
    ensure!(entries.len() == 2, "index entries {entries:?}");
    paths.extend(entries.iter().cloned());
    let owner_only = format!("sasl:{}:ALL", AGENT.0);
    for (p, acl) in acls_of(lab.zk(), &paths)? {
        eprintln!("ACL {p}: {acl}");
        ensure!(acl == owner_only, "{p} has ACL {acl}, not {owner_only}");
    }

    let reg0 = format!("{HEARTBEAT_PATH}/{}", Cluster::node_id(0));
    let entry0 = entries
        .iter()
        .find(|e| e.contains("~node0~"))
        .context("node0's index entry")?
        .clone();
    for (who, user) in [
        ("an unauthenticated client", None),
        ("user intruder", Some(OTHER)),
    ] {
        let allowed = forgeries_not_refused(lab.zk(), user, (&reg0, &entry0))?;
        ensure!(allowed.is_empty(), "{who} was not refused: {allowed:?}");
        eprintln!("{who}: every forgery refused with NoAuth");
    }
    ensure!(
        exists(lab.zk(), &reg0)? && exists(lab.zk(), &entry0)?,
        "node0's znodes are gone"
    );

    // A wrong password: one clear error, no registration, no crash.
    let wrong = secrets.path().join("wrong.pw");
    let cfg = sasl_config(&lab, 2, &wrong);
    lab.start_agent_with(2, &cfg)?;
    let refused = "refused our authentication";
    ensure!(
        wait_until(SAFETY, Duration::from_millis(100), || lab
            .agent(2)
            .stderr_text()
            .contains(refused)),
        "node2 with a wrong password logged no '{refused}':\n{}",
        lab.agent(2).stderr_tail(30)
    );
    // Two more attempts at least (backoff up to 5 s), then look again.
    std::thread::sleep(Duration::from_secs(8));
    let log = lab.agent(2).stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains(refused))
        .unwrap_or_default();
    eprintln!("node2: {line}");
    ensure!(
        line.contains("ERROR") && line.contains("ZK_SASL_USERNAME") && line.contains("wrong.pw"),
        "the error does not name the settings: {line}"
    );
    ensure!(!log.contains(WRONG_PASSWORD), "the password was logged");
    ensure!(
        log.matches(refused).count() == 1,
        "the error is repeated at once:\n{log}"
    );
    ensure!(lab.agent_mut(2).is_running(), "node2 exited:\n{log}");
    ensure!(
        !exists(lab.zk(), &format!("{HEARTBEAT_PATH}/node2"))?,
        "node2 registered with a wrong password"
    );
    let state = lab.agent(2).metric_value("meshprobe_zookeeper_state")?;
    ensure!(
        state == 1.0,
        "node2's ZooKeeper state is {state}, not 1 (connecting)"
    );
    ensure!(
        !lab.agent(0)
            .events()
            .iter()
            .any(|e| e.kind() == "peer_added" && e.v["node_id"] == "node2"),
        "node0 added node2"
    );

    // The Secret is fixed: the next session uses the new password.
    std::fs::write(&wrong, AGENT.1)?;
    wait_peer(&mut lab, 0, 2)?;
    ensure!(
        lab.agent(2)
            .stderr_text()
            .contains("accepted our credentials"),
        "node2 did not say it got in"
    );
    Ok(())
}

/// An older, unauthenticated version left the directories world-writable: the first agent
/// with credentials restricts them to its identity (and, with ZK_WORLD_READ, world read), says
/// so, and from then on an unauthenticated client may list the members but not forge any.
#[test]
fn open_directories_are_taken_over_and_world_read_is_read_only() -> Result<()> {
    let test = "open_directories_are_taken_over_and_world_read_is_read_only";
    let Some((mut lab, secrets)) = sasl_lab(test, 1, false)? else {
        return Ok(());
    };
    let dirs = vec![HEARTBEAT_PATH.to_string(), topology(), zone_dir()];
    let to_create = dirs.clone();
    lab.zk()
        .session_as(None, "creating open directories", async move |c| {
            let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
            for d in &to_create {
                c.mkdir(d, &open)
                    .await
                    .map_err(|e| anyhow::anyhow!("mkdir {d}: {e}"))?;
            }
            Ok(())
        })?;
    for (p, acl) in acls_of(lab.zk(), &dirs)? {
        ensure!(acl == "world:anyone:ALL", "{p} starts as {acl}");
    }
    let cfg = sasl_config(&lab, 0, &secrets.path().join("agent.pw")).env("ZK_WORLD_READ", "true");
    lab.start_agent_with(0, &cfg)?;
    let reg0 = format!("{HEARTBEAT_PATH}/node0");
    ensure!(
        wait_until(SAFETY, Duration::from_millis(100), || exists(
            lab.zk(),
            &reg0
        )
        .unwrap_or(false)),
        "node0 did not register:\n{}",
        lab.agent(0).stderr_tail(30)
    );
    let want = format!("sasl:{}:ALL,world:anyone:READ", AGENT.0);
    for (p, acl) in acls_of(lab.zk(), &dirs)? {
        eprintln!("ACL {p}: {acl}");
        ensure!(acl == want, "{p} has ACL {acl}, not {want}");
    }
    let log = lab.agent(0).stderr_text();
    ensure!(
        log.matches("was world-writable").count() == dirs.len(),
        "no warning for each directory taken over:\n{log}"
    );
    let listed = lab.zk().ls(HEARTBEAT_PATH)?;
    ensure!(
        listed == ["node0"],
        "unauthenticated listing (world read): {listed:?}"
    );
    let entry0 = entries(lab.zk())?.pop().context("node0's index entry")?;
    let allowed = forgeries_not_refused(lab.zk(), None, (&reg0, &entry0))?;
    ensure!(
        allowed.is_empty(),
        "an unauthenticated client was not refused: {allowed:?}"
    );
    Ok(())
}

/// A server that requires SASL of every session (`enforce.auth.enabled`): an agent without
/// credentials says the server wants them and keeps running; one with them registers; an
/// unauthenticated client gets no session at all.
#[test]
fn server_requiring_sasl_refuses_agents_without_credentials() -> Result<()> {
    let test = "server_requiring_sasl_refuses_agents_without_credentials";
    let Some((mut lab, secrets)) = sasl_lab(test, 2, true)? else {
        return Ok(());
    };
    let cfg = lab.config(0);
    lab.start_agent_with(0, &cfg)?;
    let cfg = sasl_config(&lab, 1, &secrets.path().join("agent.pw"));
    lab.start_agent_with(1, &cfg)?;
    let reg1 = format!("{HEARTBEAT_PATH}/node1");
    ensure!(
        wait_until(SAFETY, Duration::from_millis(100), || exists(
            lab.zk(),
            &reg1
        )
        .unwrap_or(false)),
        "node1 (with credentials) did not register:\n{}",
        lab.agent(1).stderr_tail(30)
    );
    let hint = "no credentials configured; the server requires SASL";
    ensure!(
        wait_until(SAFETY, Duration::from_millis(100), || lab
            .agent(0)
            .stderr_text()
            .contains(hint)),
        "node0 (no credentials) did not say the server requires SASL:\n{}",
        lab.agent(0).stderr_tail(30)
    );
    let log = lab.agent(0).stderr_text();
    ensure!(
        log.contains("UNAUTHENTICATED"),
        "node0 did not warn at start-up that its membership is unauthenticated"
    );
    ensure!(lab.agent_mut(0).is_running(), "node0 exited:\n{log}");
    ensure!(
        !exists(lab.zk(), &format!("{HEARTBEAT_PATH}/node0"))?,
        "node0 registered without credentials"
    );
    let unauthenticated = lab.zk().ls(HEARTBEAT_PATH);
    ensure!(
        unauthenticated.is_err(),
        "an unauthenticated client listed {unauthenticated:?}"
    );
    eprintln!("unauthenticated client: {:#}", unauthenticated.unwrap_err());
    Ok(())
}
