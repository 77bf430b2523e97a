//! A cluster: a [`Star`](crate::star::Star) of namespaces, ZooKeeper and/or the broker in its
//! core, and agents on its nodes; with the short settings that keep the agent tests quick.

use super::*;

/// Short settings that keep the agent tests quick (CONTRACT.md names).
pub const TEST_WINDOW: &str = "2s";
pub const TEST_WINDOW_DURATION: Duration = Duration::from_secs(2);
pub const TEST_INTERVAL: &str = "100ms";
pub const TEST_CONN_TIMEOUT_S: u64 = 4;
pub const TEST_PEER_GRACE: &str = "2s";
pub const TEST_SHUTDOWN_GRACE: &str = "3s";
/// CLOCK_TAI now, in nanoseconds (the agents' window clock).
pub fn tai_now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_TAI).expect("CLOCK_TAI");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The index (`window_seq`) of the window in progress now, for windows of `len`: agents align
/// windows to CLOCK_TAI, `window_seq = window_start_tai_ns / window_length_ns`. Its summary is
/// printed once it ends.
pub fn window_now_of(len: Duration) -> u64 {
    tai_now_ns() / len.as_nanos() as u64
}

/// [`window_now_of`] the test window ([`TEST_WINDOW_DURATION`]).
pub fn window_now() -> u64 {
    window_now_of(TEST_WINDOW_DURATION)
}

/// The znode folder with the defaults ROOT_PATH_ZK=meshprobe, HEART_BEAT_NODE_PATH=heartbeat.
pub const HEARTBEAT_PATH: &str = "/meshprobe/heartbeat";
pub const ZK_PORT: u16 = 2181;
pub const KAFKA_PORT: u16 = 9092;
pub const TEST_TOPIC: &str = "distributedTrace";

/// A [`Star`](crate::star::Star) with ZooKeeper and/or the broker in its core namespace, and
/// agents on its nodes. Drop order: agents, broker, ZooKeeper, mesh, then the test lock.
pub struct Cluster {
    pub agents: BTreeMap<usize, Agent>,
    pub kafka: Option<crate::services::Tansu>,
    pub zk: Option<crate::services::ZooKeeper>,
    pub star: crate::star::Star,
    pub family: crate::topo::Family,
    pub env: crate::env::TestEnv,
}

impl Cluster {
    /// `Ok(None)` (after printing why) when the test must be skipped: no root, a tool, the
    /// meshprobe binary, java/ZooKeeper (with `zk`) or tansu (with `kafka`) missing.
    pub fn acquire(
        test: &str,
        nodes: usize,
        family: crate::topo::Family,
        zk: bool,
        kafka: bool,
    ) -> Result<Option<Cluster>> {
        let missing = if zk {
            crate::services::zookeeper_missing()
        } else {
            None
        }
        .or_else(|| {
            if kafka {
                crate::services::tansu_missing()
            } else {
                None
            }
        });
        if let Some(why) = missing {
            crate::env::skip(test, &why);
            return Ok(None);
        }
        let Some(env) = crate::env::TestEnv::acquire(test, &["ping", "nft"])? else {
            return Ok(None);
        };
        let star = crate::star::Star::new(nodes)?;
        let core_ip = star.core_ip(family);
        let zk = if zk {
            Some(crate::services::ZooKeeper::start(
                star.core(),
                core_ip,
                ZK_PORT,
            )?)
        } else {
            None
        };
        let kafka = if kafka {
            let t = crate::services::Tansu::start(star.core(), core_ip, KAFKA_PORT)?;
            t.create_topic(TEST_TOPIC, 3)
                .with_context(|| format!("creating topic {TEST_TOPIC}"))?;
            Some(t)
        } else {
            None
        };
        Ok(Some(Cluster {
            agents: BTreeMap::new(),
            kafka,
            zk,
            star,
            family,
            env,
        }))
    }

    pub fn bin(&self) -> &Path {
        &self.env.mp.bin
    }

    /// Node `i`'s id: `node<i>`.
    pub fn node_id(i: usize) -> String {
        format!("node{i}")
    }

    pub fn node_ip(&self, i: usize) -> IpAddr {
        self.star.node_ip(i, self.family)
    }

    pub fn zk(&self) -> &crate::services::ZooKeeper {
        self.zk.as_ref().expect("lab without ZooKeeper")
    }

    pub fn zk_mut(&mut self) -> &mut crate::services::ZooKeeper {
        self.zk.as_mut().expect("lab without ZooKeeper")
    }

    pub fn kafka(&self) -> &crate::services::Tansu {
        self.kafka.as_ref().expect("lab without broker")
    }

    pub fn kafka_mut(&mut self) -> &mut crate::services::Tansu {
        self.kafka.as_mut().expect("lab without broker")
    }

    /// The test settings for node `i`: ZooKeeper and Kafka of the lab (when running), the
    /// node's address as REGISTER_PUBLIC_DNS, short window/interval/grace, admin on
    /// 127.0.0.1:9862.
    pub fn config(&self, i: usize) -> AgentConfig {
        let mut c = AgentConfig::new()
            .env("MESHPROBE_NODE_ID", Self::node_id(i))
            .env("REGISTER_PUBLIC_DNS", self.node_ip(i))
            .env("MESHPROBE_WINDOW", TEST_WINDOW)
            .env("MESHPROBE_INTERVAL", TEST_INTERVAL)
            .env("CONN_TIMEOUT", TEST_CONN_TIMEOUT_S)
            .env("MESHPROBE_PEER_GRACE", TEST_PEER_GRACE)
            .env("MESHPROBE_SHUTDOWN_GRACE", TEST_SHUTDOWN_GRACE)
            .env("MESHPROBE_ADMIN_LISTEN", "127.0.0.1:9862")
            // Tests probe agents with `meshprobe ping` from the core, which is no peer: the
            // lab's networks are allowed besides the peers (the default answers peers only).
            .env("MESHPROBE_REFLECT_ALLOW", crate::TEST_NETWORKS)
            // Synthetic members and routed zones live outside a node's own subnet (the
            // default); agent_members tests the default.
            .env("MESHPROBE_PEER_NETWORKS", crate::TEST_NETWORKS);
        if let Some(zk) = &self.zk {
            c = c.env("SERVERS_ZK", zk.connect_string());
        }
        if let Some(k) = &self.kafka {
            c = c
                .env("KAFKA_BOOTSTRAP_SERVERS", k.bootstrap())
                .env("KAFKA_TOPIC", TEST_TOPIC);
        }
        c
    }

    /// Starts the agent of node `i` with `cfg`, waits for its ready line and checks its
    /// timestamping (kernel, unless MESHPROBE_TESTS_ALLOW_SOCKET=1).
    pub fn start_agent_with(&mut self, i: usize, cfg: &AgentConfig) -> Result<&mut Agent> {
        if self.agents.contains_key(&i) {
            bail!("node {i} already runs an agent");
        }
        let a = Agent::start(&self.env.mp.bin, self.star.node(i), &Self::node_id(i), cfg)?;
        let ready = a.ready.clone().unwrap_or_default();
        self.env.mp.check_timestamping(
            &format!("agent {}", a.node_id),
            &ready,
            &a.stderr_tail(20),
        )?;
        self.agents.insert(i, a);
        Ok(self.agents.get_mut(&i).expect("just inserted"))
    }

    /// [`Cluster::start_agent_with`] the lab's [`Cluster::config`].
    pub fn start_agent(&mut self, i: usize) -> Result<&mut Agent> {
        let cfg = self.config(i);
        self.start_agent_with(i, &cfg)
    }

    pub fn agent(&self, i: usize) -> &Agent {
        self.agents
            .get(&i)
            .unwrap_or_else(|| panic!("no agent on node {i}"))
    }

    pub fn agent_mut(&mut self, i: usize) -> &mut Agent {
        self.agents
            .get_mut(&i)
            .unwrap_or_else(|| panic!("no agent on node {i}"))
    }

    /// Every summary line printed by every agent so far.
    pub fn stdout_summaries(&self) -> Vec<Value> {
        self.agents.values().flat_map(Agent::summaries).collect()
    }

    /// Highest window_seq printed by any agent so far (0 if none).
    pub fn max_window_seq(&self) -> u64 {
        self.stdout_summaries()
            .iter()
            .map(|s| num(s, "window_seq"))
            .max()
            .unwrap_or(0)
    }

    /// `meshprobe consume` of the lab's topic from the core namespace.
    pub fn consume(&self, args: &[&str]) -> Result<Vec<Value>> {
        consume(
            &self.env.mp.bin,
            self.star.core(),
            &self.kafka().bootstrap(),
            TEST_TOPIC,
            args,
        )
    }

    /// Waits until every agent in `agents` printed a summary with `received > 0` towards every
    /// other one of them in a window `>= min_seq` (at most `timeout`).
    pub fn wait_pairs_measured(
        &mut self,
        agents: &[usize],
        min_seq: u64,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for &i in agents {
                let sums = self.agent(i).summaries();
                for &j in agents {
                    if i == j {
                        continue;
                    }
                    let dst = Self::node_id(j);
                    if !sums.iter().any(|s| {
                        s["dst"] == dst.as_str()
                            && num(s, "window_seq") >= min_seq
                            && num(s, "received") > 0
                    }) {
                        missing.push(format!("{}->{dst}", Self::node_id(i)));
                    }
                }
                if !self.agent_mut(i).is_running() {
                    let a = self.agent(i);
                    bail!("{} exited; stderr:\n{}", a.label(), a.stderr_tail(40));
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no summary with received > 0 in a window >= {min_seq} within {timeout:?} \
                     for {missing:?}"
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// State for a failure message: TCP sockets and neighbours of every namespace, ZooKeeper's
    /// connections and members, the tail of every agent's stderr.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut section = |title: String, body: String| {
            out.push_str(&format!("--- {title}\n{}\n", body.trim_end()));
        };
        let run = |ns: &Netns, argv: &[&str]| match ns.output(argv) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("{e:#}"),
        };
        section(
            "core: ss -tnoi".into(),
            run(self.star.core(), &["ss", "-tnoi"]),
        );
        for i in self.star.node_indices() {
            let ns = self.star.node(i);
            section(format!("node{i}: ss -tnoi"), run(ns, &["ss", "-tnoi"]));
            section(format!("node{i}: ip neigh"), run(ns, &["ip", "neigh"]));
        }
        if let Some(zk) = &self.zk {
            section(
                "ZooKeeper cons".into(),
                zk.four_letter("cons").unwrap_or_else(|e| format!("{e:#}")),
            );
            section(
                format!("ZooKeeper ls {HEARTBEAT_PATH}"),
                format!("{:?}", zk.ls(HEARTBEAT_PATH)),
            );
            section("ZooKeeper log".into(), zk.log_tail(15));
        }
        for (i, a) in &self.agents {
            section(format!("agent node{i} stderr"), a.stderr_tail(25));
        }
        out
    }

    /// SIGTERMs every agent, then waits for each exit (at most `timeout` each).
    pub fn stop_agents(&mut self, timeout: Duration) -> Result<()> {
        for a in self.agents.values_mut() {
            a.sigterm()?;
        }
        for a in self.agents.values_mut() {
            let st = a.wait_exit(timeout)?;
            if !st.success() {
                bail!(
                    "{} exited {st} after SIGTERM; stderr:\n{}",
                    a.label(),
                    a.stderr_tail(40)
                );
            }
        }
        Ok(())
    }
}
