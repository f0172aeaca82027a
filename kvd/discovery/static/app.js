// The kvd cluster page: polls /v1/cluster on the node that served it and
// redraws the table.  Plain DOM, no framework, no build step.  Every value
// is set as text (never as HTML).
"use strict";

const POLL_MS = 1000;
const COLUMNS = [
  ["node", (m) => m.id],
  ["address", (m) => m.client || "–"],
  ["role", (m) => roleText(m)],
  ["status", (m) => (m.up ? "up" : "down")],
  ["term", (m) => num(m.term)],
  ["commit", (m) => num(m.commit_index)],
  ["applied", (m) => num(m.applied_index)],
  ["last log", (m) => num(m.last_index)],
  ["lag", (m) => num(m.lag)],
];

function roleText(m) {
  const role = m.role || "unknown";
  return !m.voter && role !== "learner" && role !== "joining" ? role + " (learner)" : role;
}
function num(v) { return v === null || v === undefined ? "–" : String(v); }
function $(id) { return document.getElementById(id); }

function render(view) {
  $("cluster-id").textContent = view.cluster_id || "";
  const leader = $("leader");
  leader.textContent = view.leader ? view.leader_address || view.leader : "none";
  leader.dataset.leader = view.leader || "";
  $("term").textContent = num(view.term);
  $("commit").textContent = num(view.commit);
  const voters = view.members.filter((m) => m.voter);
  const up = voters.filter((m) => m.up).length;
  $("quorum").textContent = up + " of " + voters.length + " (quorum " + (Math.floor(voters.length / 2) + 1) + ")";
  $("source").textContent = view.node + " (" + (view.role || "?") + ")";
  $("no-leader").hidden = Boolean(view.leader);

  const body = document.createElement("tbody");
  for (const m of view.members) {
    const tr = document.createElement("tr");
    tr.dataset.node = m.id;
    tr.dataset.status = m.up ? "up" : "down";
    tr.dataset.role = m.role || "";
    for (const [label, value] of COLUMNS) {
      const td = document.createElement("td");
      td.dataset.label = label;
      td.textContent = value(m);
      if (label === "node" && m.self) td.className = "me";
      if (label === "address" && m.client === m.id) td.className = "dup";
      if (label === "status") td.className = m.up ? "status-up" : "status-down";
      if (label === "role" && m.role === "leader") td.className = "role-leader";
      if (["term", "commit", "applied", "last log", "lag"].includes(label)) td.className = "num";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("members").replaceChild(body, $("members").tBodies[0]);
  $("updated").textContent = new Date().toLocaleTimeString();
}

function connection(state, text) {
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = text;
}

async function poll() {
  try {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 3000);
    const response = await fetch("/v1/cluster", { cache: "no-store", signal: controller.signal });
    clearTimeout(timer);
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    connection("live", "live");
  } catch (e) {
    connection("lost", "this node is not answering (" + e.message + "); retrying");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
