// CoSER web app front end. Data from the server is only ever put in the page with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { who: null, session: null, busy: false, pair: null, models: [], defaultModel: "" };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// Text with single-line [thoughts] wrapped in spans that the toggle hides (the pattern GCA uses).
function renderText(node, text) {
  node.replaceChildren();
  const re = /\[[^\]\n]*\]/g;
  let last = 0, m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) node.appendChild(document.createTextNode(text.slice(last, m.index)));
    node.appendChild(el("span", "thought", m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) node.appendChild(document.createTextNode(text.slice(last)));
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function params(hash) {
  const i = hash.indexOf("?");
  return new URLSearchParams(i < 0 ? "" : hash.slice(i + 1));
}

function whoParams(who) {
  const p = new URLSearchParams();
  if (who.test_item !== undefined) { p.set("item", who.test_item); p.set("character", who.character); }
  else { p.set("book", who.book); p.set("name", who.character); }
  return p.toString();
}

function whoFrom(p) {
  if (p.get("item") !== null) return { test_item: Number(p.get("item")), character: p.get("character") || "" };
  if (p.get("name") !== null) return { book: p.get("book") || "", character: p.get("name") };
  return state.who;
}

function whoLabel(who) {
  if (!who) return "Pick a character in Browse first.";
  return who.test_item !== undefined ? `${who.character} (test item ${who.test_item})` : `${who.character} — ${who.book}`;
}

// ---- routing ----------------------------------------------------------------------------------
function route() {
  const hash = location.hash || "#browse";
  const name = hash.slice(1).split("?")[0] || "browse";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + name;
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.id === "nav-" + name);
  const p = params(hash);
  if (name === "character") showCharacter(p.get("book") || "", p.get("name") || "");
  if (name === "chat") setupChat(whoFrom(p));
  if (name === "compare") { setupCompare(whoFrom(p)); setupScene(); }
  if (name === "scene") setupScene();
  if (name === "prefs") showPrefs();
}
window.addEventListener("hashchange", route);

// ---- browse -----------------------------------------------------------------------------------
let searchTimer = null, searchSeq = 0;
async function search() {
  const q = $("search").value;
  const seq = ++searchSeq;
  try {
    const data = await api("/api/characters?q=" + encodeURIComponent(q));
    if (seq !== searchSeq) return;  // a later query is under way: never show an earlier one's answer over it
    const ul = $("results");
    ul.replaceChildren();
    for (const c of data.characters) {
      const li = el("li", "hit");
      const a = el("a", null, c.name);
      a.href = "#character?" + new URLSearchParams({ book: c.book, name: c.name }).toString();
      li.append(a, el("span", "muted", ` — ${c.book} · ${c.utterances} lines, ${c.conversations} conversations`));
      ul.appendChild(li);
    }
    $("search-note").textContent = `${data.characters.length} character(s)` + (q ? ` matching "${q}"` : "") +
      (data.characters.length >= 200 ? " (first 200)" : "");
    if (state.hasTests) {
      const t = await api("/api/test_items?q=" + encodeURIComponent(q));
      if (seq !== searchSeq) return;
      const tl = $("test-results");
      tl.replaceChildren();
      for (const it of t.items.slice(0, 50)) {
        const li = el("li", "item");
        li.appendChild(el("span", "muted", `#${it.index} ${it.book}: `));
        for (const c of it.characters) {
          const a = el("a", null, c);
          a.href = "#chat?" + new URLSearchParams({ item: it.index, character: c }).toString();
          li.append(a, document.createTextNode(" "));
        }
        li.appendChild(el("div", "muted", it.scenario.slice(0, 200)));
        tl.appendChild(li);
      }
    }
  } catch (e) { $("search-note").textContent = "error: " + e.message; }
}
$("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(search, 200); });

async function showCharacter(book, name) {
  $("char-name").textContent = name;
  $("char-book").textContent = book;
  $("profile").textContent = "loading…";
  $("plots").replaceChildren();
  state.who = { book, character: name };
  const q = new URLSearchParams({ book, name }).toString();
  $("card-link").href = "/api/card?" + q;
  $("card-v3").href = "/api/card?format=v3&" + q;
  $("card-png").href = "/api/card?format=png&" + q;
  $("chat-link").href = "#chat?" + q;
  $("compare-link").href = "#compare?" + q;
  try {
    const c = await api("/api/character?" + q);
    state.character = c;
    $("profile").textContent = c.profile || "(no profile)";
    for (const plot of c.plots) {
      const div = el("div", "plot");
      div.appendChild(el("h4", null, `Plot ${plot.i_p}`));
      if (plot.summary) div.appendChild(el("p", "muted", plot.summary));
      if (plot.experience) div.appendChild(el("p", null, plot.experience));
      for (const conv of plot.conversations) {
        const cd = el("div", "conv");
        cd.appendChild(el("p", "scenario", conv.scenario));
        for (const d of conv.dialogues) {
          const line = el("div", "line" + (d.own ? " own" : ""));
          line.appendChild(el("span", "speaker", d.character + ": "));
          const msg = el("span", "message");
          renderText(msg, d.message);
          line.appendChild(msg);
          cd.appendChild(line);
        }
        div.appendChild(cd);
      }
      $("plots").appendChild(div);
    }
  } catch (e) { $("profile").textContent = "error: " + e.message; }
}

// ---- models -----------------------------------------------------------------------------------
function fillModels(select, pick) {
  select.replaceChildren();
  for (const m of state.models) {
    const o = el("option", null, m);
    o.value = m;
    select.appendChild(o);
  }
  select.value = pick || state.defaultModel;
}

// ---- chat -------------------------------------------------------------------------------------
function setupChat(who) {
  state.who = who;
  $("chat-who").textContent = whoLabel(who);
  $("start").disabled = !who;
  const scene = $("scene");
  scene.replaceChildren();
  const def = el("option", null, "their first scene in the book");
  def.value = "";
  scene.appendChild(def);
  if (who && who.test_item === undefined && state.character && state.character.name === who.character && state.character.book === who.book) {
    for (const plot of state.character.plots) for (const conv of plot.conversations) {
      const o = el("option", null, conv.scenario.slice(0, 90));
      o.value = conv.scenario;
      scene.appendChild(o);
    }
  }
  scene.disabled = !who || who.test_item !== undefined;
  listTranscripts();
}

async function listTranscripts() {
  try {
    const r = await api("/api/transcripts");
    const sel = $("transcript");
    sel.replaceChildren();
    for (const n of r.transcripts) { const o = el("option", null, n); o.value = n; sel.appendChild(o); }
    $("resume").disabled = !r.transcripts.length;
  } catch (e) { $("chat-status").textContent = "error: " + e.message; }
}

async function resumeChat() {
  const name = $("transcript").value;
  if (!name) return;
  try {
    const v = await api("/api/resume", { transcript: name });
    state.session = v.session;
    state.view = v;
    $("chat-who").textContent = v.book ? `${v.name} — ${v.book}` : v.name;
    $("chat-scenario").textContent = v.scenario;
    redraw(v);
    $("chat-status").textContent = `continuing ${name} with ${v.name} on ${v.model}`;
  } catch (e) { $("chat-status").textContent = "error: " + e.message; }
}

function addMessage(role, name, text) {
  const div = el("div", "msg " + role);
  div.appendChild(el("span", "speaker", name + ": "));
  const body = el("span", "text");
  renderText(body, text);
  div.appendChild(body);
  $("log").appendChild(div);
  return div;
}

function redraw(view) {
  $("log").replaceChildren();
  if (view.greeting) addMessage("bot", view.name, view.greeting);
  view.turns.forEach((t, i) => {
    addMessage("user", $("user-role").value || "You", t.user);
    const div = addMessage("bot", view.name, t.reply + (t.status === "stopped" ? " [stopped]" : ""));
    if (t.alternatives > 1 && i === view.turns.length - 1) {
      const alts = el("span", "alts", `reply ${t.chosen + 1} of ${t.alternatives}: `);
      for (let n = 1; n <= t.alternatives; n++) {
        const b = el("button", "alt", String(n));
        b.addEventListener("click", () => chatOp("alt", n));
        alts.appendChild(b);
      }
      div.appendChild(alts);
    }
  });
}

async function startChat() {
  if (!state.who) return;
  $("chat-status").textContent = "starting…";
  try {
    const v = await api("/api/session", { ...state.who, model: $("model").value, scenario: $("scene").value,
                                          user_role: $("user-role").value });
    state.session = v.session;
    state.view = v;
    $("chat-scenario").textContent = v.scenario;
    redraw(v);
    $("chat-status").textContent = `chatting with ${v.name} on ${v.model}`;
    $("msg").focus();
  } catch (e) { $("chat-status").textContent = "error: " + e.message; }
}

// POST to an event-stream endpoint; onEvent(kind, data) for each server-sent event as it arrives.
// An `error` event throws. `signal` (an AbortController's) lets the page walk away from a stream.
async function postEvents(path, body, onEvent, signal) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });
  if (!r.ok) { const d = await r.json(); throw new Error(d.error || r.statusText); }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let ev = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) ev = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const obj = data ? JSON.parse(data) : {};
      if (ev === "error") throw new Error(obj.message);
      onEvent(ev, obj);
    }
  }
}

// POST /api/chat: the reply's tokens as they arrive; returns the `done` event's data.
async function streamChat(body, onToken, onDiscard) {
  let result = null;
  await postEvents("/api/chat", body, (ev, obj) => {
    if (ev === "token") onToken(obj.text);
    else if (ev === "discard") onDiscard();
    else if (ev === "done") result = obj;
  });
  return result;
}

async function generate(action, message) {
  if (!state.session || state.busy) return;
  state.busy = true;
  $("chat-status").textContent = "…";
  if (action === "edit") redraw({ ...state.view, turns: state.view.turns.slice(0, -1) });
  if (action === "send" || action === "edit") addMessage("user", $("user-role").value || "You", message);
  const div = addMessage("bot streaming", state.view.name, "");
  const body = div.querySelector(".text");
  let text = "";
  try {
    const done = await streamChat({ session: state.session, action, message },
      (piece) => { text += piece; renderText(body, text); },
      () => { text = ""; renderText(body, ""); });
    div.classList.remove("streaming");
    if (done) {
      await chatOp("view");
      $("chat-status").textContent = done.transcript ? "transcript: " + done.transcript : "";
    }
  } catch (e) {
    div.remove();
    $("chat-status").textContent = "error: " + e.message;
  } finally { state.busy = false; }
}

async function chatOp(op, n) {
  if (!state.session) return;
  try {
    const v = await api("/api/chat/edit", { session: state.session, op: op === "view" ? "save" : op, n });
    state.view = v;
    redraw(v);
    if (op !== "view") $("chat-status").textContent = v.transcript ? "transcript: " + v.transcript : "";
  } catch (e) { $("chat-status").textContent = "error: " + e.message; }
}

function send() {
  const m = $("msg").value.trim();
  if (!m) return;
  $("msg").value = "";
  const action = state.editing ? "edit" : "send";
  state.editing = false;
  $("send").textContent = "Send";
  generate(action, m);
}
$("start").addEventListener("click", startChat);
$("resume").addEventListener("click", resumeChat);
$("send").addEventListener("click", send);
$("msg").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } });
$("retry").addEventListener("click", () => {
  if (state.view && state.view.turns.length) { redrawWithoutLastReply(); generate("retry", ""); }
});
$("undo").addEventListener("click", () => chatOp("undo"));
$("edit").addEventListener("click", () => {
  if (!state.view || !state.view.turns.length) return;
  $("msg").value = state.view.turns[state.view.turns.length - 1].user;
  state.editing = true;
  $("send").textContent = "Send edit";
  $("msg").focus();
});

function redrawWithoutLastReply() {
  const msgs = $("log").querySelectorAll(".msg.bot");
  if (msgs.length) msgs[msgs.length - 1].remove();
}

// ---- scene ------------------------------------------------------------------------------------
// A renderer of one scene's events into `box`: a bubble per turn, filled token by token, then set to
// the turn's final text (the engine may trim it); the next-speaker choice as a small line.
function sceneView(box) {
  box.replaceChildren();
  let cur = null;
  const open = (role) => {
    const div = role === "NSP" ? el("div", "nsp streaming") : el("div", "msg bot streaming");
    if (role !== "NSP") div.appendChild(el("span", "speaker", role + ": "));
    const text = el("span", "text", role === "NSP" ? "choosing the next speaker…" : "");
    div.appendChild(text);
    box.appendChild(div);
    cur = { role, div, text, buf: "" };
    return cur;
  };
  return (ev, d) => {
    if (ev === "speak") open(d.role);
    else if (ev === "token" && cur && d.role !== "NSP") { cur.buf += d.text; renderText(cur.text, cur.buf); }
    else if (ev === "discard" && cur) { cur.buf = ""; renderText(cur.text, ""); }
    else if (ev === "turn") {
      const c = cur && cur.role === d.role ? cur : open(d.role);  // replayed book lines arrive whole
      if (d.role === "NSP") c.text.textContent = "→ next: " + d.content;
      else renderText(c.text, d.content);
      c.div.classList.remove("streaming");
      c.div.dataset.round = d.round;
      cur = null;
    }
  };
}

async function setupScene() {
  const sel = $("sc-item");
  if (sel.options.length) return;
  try {
    const r = await api("/api/test_items");
    state.items = r.items;
    for (const target of [sel, $("cs-item")]) {
      target.replaceChildren();
      for (const it of r.items) {
        const o = el("option", null, `#${it.index} ${it.book}: ${it.characters.join(", ")}`);
        o.value = it.index;
        target.appendChild(o);
      }
    }
    fillHumans();
    if (!r.items.length) $("sc-status").textContent = "no test items: start the app with --test_file to play scenes";
  } catch (e) { $("sc-status").textContent = "error: " + e.message; }
}

function fillHumans() {
  const it = (state.items || []).find((x) => String(x.index) === $("sc-item").value);
  const h = $("sc-human");
  h.replaceChildren();
  const none = el("option", null, "nobody (watch)");
  none.value = "";
  h.appendChild(none);
  for (const c of it ? it.characters : []) { const o = el("option", null, c); o.value = c; h.appendChild(o); }
  $("sc-scenario").textContent = it ? it.scenario : "";
}

async function playScene() {
  const item = $("sc-item").value;
  if (item === "" || state.sceneAbort) return;
  const show = sceneView($("sc-log"));
  state.sceneAbort = new AbortController();
  $("sc-play").disabled = true;
  $("sc-stop").disabled = false;
  $("sc-status").textContent = "playing…";
  const body = { test_item: Number(item), actor_model: $("sc-actor").value, env_model: $("sc-env").value,
                 nsp_model: $("sc-nsp").value, protocol: $("sc-protocol").value, continue_from: $("sc-continue").value,
                 seed: $("sc-seed").value, retrieval: $("sc-retrieval").value, wo_thought: $("sc-wo-thought").checked, use_motivation: $("sc-motivation").checked,
                 human: $("sc-human").value };
  try {
    await postEvents("/api/scene", body, (ev, d) => {
      if (ev === "start") { state.scene = d.scene; $("sc-scenario").textContent = d.scenario; }
      else if (ev === "your_turn") {
        state.yourTurns = (state.yourTurns || 0) + 1;
        $("sc-composer").hidden = false;
        $("sc-msg").placeholder = `Your line as ${d.character} (Enter sends)`;
        $("sc-status").textContent = `your turn: speak as ${d.character}`;
        $("sc-msg").focus();
      } else if (ev === "done") {
        $("sc-status").textContent = `finished: ${d.record.simulation.length} entries; saved to ${d.saved}`;
      } else { show(ev, d); if (ev === "speak") $("sc-status").textContent = `${d.role} …`; }
    }, state.sceneAbort.signal);
  } catch (e) {
    $("sc-status").textContent = e.name === "AbortError" ? "stopped" : "error: " + e.message;
  } finally {
    state.sceneAbort = null;
    state.scene = null;
    $("sc-composer").hidden = true;
    $("sc-play").disabled = false;
    $("sc-stop").disabled = true;
  }
}

async function sayLine() {
  const m = $("sc-msg").value.trim();
  if (!m || !state.scene) return;
  const turn = state.yourTurns;
  try {
    await api("/api/scene/say", { scene: state.scene, message: m });
    if (state.yourTurns !== turn) return;  // the scene came back to you before this answer did
    $("sc-msg").value = "";
    $("sc-composer").hidden = true;
    $("sc-status").textContent = "…";
  } catch (e) { $("sc-status").textContent = "error: " + e.message; }
}
$("sc-item").addEventListener("change", fillHumans);
$("sc-play").addEventListener("click", playScene);
$("sc-stop").addEventListener("click", () => { if (state.sceneAbort) state.sceneAbort.abort(); });
$("sc-say").addEventListener("click", sayLine);
$("sc-msg").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sayLine(); } });

// ---- thoughts toggle --------------------------------------------------------------------------
$("thoughts").addEventListener("change", () => document.body.classList.toggle("hide-thoughts", !$("thoughts").checked));

// ---- compare ----------------------------------------------------------------------------------
function setupCompare(who) {
  state.who = who;
  $("cmp-who").textContent = whoLabel(who);
  $("cmp-ask").disabled = !who;
}

async function ask() {
  const m = $("cmp-msg").value.trim();
  if (!m || !state.who) return;
  for (const id of ["left", "right", "left-model", "right-model"]) $(id).textContent = "";
  $("cmp-status").textContent = "both models are answering…";
  for (const id of ["vote-left", "vote-right", "vote-tie"]) $(id).disabled = true;
  try {
    const r = await api("/api/compare", { ...state.who, message: m, model_a: $("model-a").value, model_b: $("model-b").value,
                                          temperature_a: $("temp-a").value, temperature_b: $("temp-b").value });
    state.pair = r.pair;
    renderText($("left"), r.left);
    renderText($("right"), r.right);
    for (const id of ["vote-left", "vote-right", "vote-tie"]) $(id).disabled = false;
    $("cmp-status").textContent = "which reply is better? (models are hidden until you vote)";
  } catch (e) { $("cmp-status").textContent = "error: " + e.message; }
}

// Both scenes stream at once, each into its (shuffled) side; the settings stay hidden until the vote.
async function replayScenes() {
  const item = $("cs-item").value;
  if (item === "") return;
  for (const id of ["left", "right", "left-model", "right-model"]) $(id).textContent = "";
  for (const id of ["vote-left", "vote-right", "vote-tie"]) $(id).disabled = true;
  $("cmp-status").textContent = "both scenes are playing…";
  $("cs-play").disabled = true;
  const side = (d) => d.side;
  const views = { left: sceneView($("left")), right: sceneView($("right")) };
  const settings = (model, protocol) => ({ actor_model: model, env_model: $("cs-env").value, nsp_model: $("cs-env").value, protocol });
  try {
    await postEvents("/api/compare_scene", { test_item: Number(item), a: settings($("model-a").value, $("cs-protocol-a").value),
                                             b: settings($("model-b").value, $("cs-protocol-b").value) }, (ev, d) => {
      if (ev === "start") $("cmp-scenario").textContent = d.scenario;
      else if (ev === "done") {
        state.pair = d.pair;
        for (const id of ["vote-left", "vote-right", "vote-tie"]) $(id).disabled = false;
        $("cmp-status").textContent = "which scene is better? (settings are hidden until you vote)";
      } else if (side(d)) views[side(d)](ev, d);
    });
  } catch (e) { $("cmp-status").textContent = "error: " + e.message; }
  finally { $("cs-play").disabled = false; }
}

async function vote(choice) {
  if (!state.pair) return;
  for (const id of ["vote-left", "vote-right", "vote-tie"]) $(id).disabled = true;
  try {
    const r = await api("/api/vote", { pair: state.pair, choice });
    state.pair = null;
    $("left-model").textContent = "(" + r.left + ")";
    $("right-model").textContent = "(" + r.right + ")";
    $("cmp-status").textContent = "vote saved to " + r.saved;
  } catch (e) { $("cmp-status").textContent = "error: " + e.message; }
}
$("cmp-ask").addEventListener("click", ask);
$("cs-play").addEventListener("click", replayScenes);
$("vote-left").addEventListener("click", () => vote("left"));
$("vote-right").addEventListener("click", () => vote("right"));
$("vote-tie").addEventListener("click", () => vote("tie"));

// ---- preferences ------------------------------------------------------------------------------
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
async function showPrefs() {
  try {
    const r = await api("/api/preferences");
    $("prefs-note").textContent = `${r.votes} vote(s); win rate over decisive votes, 95% Wilson interval`;
    const tb = $("prefs-table").querySelector("tbody");
    tb.replaceChildren();
    for (const m of r.models) {
      const tr = el("tr");
      for (const v of [m.model, m.wins, m.losses, m.ties, pct(m.win_rate), `${pct(m.ci95[0])} – ${pct(m.ci95[1])}`]) tr.appendChild(el("td", null, v));
      tb.appendChild(tr);
    }
    const pb = $("pairs-table").querySelector("tbody");
    pb.replaceChildren();
    for (const p of r.pairs) {
      const tr = el("tr");
      for (const v of [p.a, p.b, p.a_wins, p.b_wins, p.ties, `${pct(p.a_win_rate)} (${pct(p.ci95[0])} – ${pct(p.ci95[1])})`]) tr.appendChild(el("td", null, v));
      pb.appendChild(tr);
    }
  } catch (e) { $("prefs-note").textContent = "error: " + e.message; }
}

async function runAgreement() {
  $("agree-note").textContent = "scoring both scenes of every scene vote…";
  $("judge-run").disabled = true;
  try {
    const r = await api("/api/agreement", { source: $("judge-source").value, judges: $("judges").value,
                                            protocol: $("judge-protocol").value });
    const tb = $("agree-table").querySelector("tbody");
    tb.replaceChildren();
    for (const j of r.judges) {
      const tr = el("tr");
      for (const v of [j.judge, j.scene_votes, j.decisive, j.agree, `${pct(j.agreement)} (${pct(j.ci95[0])} – ${pct(j.ci95[1])})`,
                       j.human_ties, j.judge_ties, j.failed, j.missing]) tr.appendChild(el("td", null, v));
      tb.appendChild(tr);
    }
    const how = r.source === "files" ? "scores read from evaluation files" : `judged now with the GCA judge (${r.protocol} protocol)`;
    $("agree-note").textContent = `${how}; agreement over votes where both the person and the judge chose a side` +
      (r.judges.length ? "" : " (no judge found)");
  } catch (e) { $("agree-note").textContent = "error: " + e.message; }
  finally { $("judge-run").disabled = false; }
}
$("judge-run").addEventListener("click", runAgreement);

// ---- start ------------------------------------------------------------------------------------
(async function init() {
  try {
    const m = await api("/api/models");
    state.models = m.models;
    state.defaultModel = m.default;
    fillModels($("model"));
    fillModels($("model-a"));
    fillModels($("model-b"), m.models.find((x) => x !== m.default) || m.default);
    for (const id of ["sc-actor", "sc-env", "sc-nsp", "cs-env"]) fillModels($(id));
    $("judges").value = m.judges.join(",");
    for (const mode of m.retrieval_modes) { const o = el("option", null, mode); o.value = mode; $("sc-retrieval").appendChild(o); }
    const b = await api("/api/books");
    state.hasTests = b.test_file;
    $("test-block").hidden = !b.test_file;
  } catch (e) { $("search-note").textContent = "error: " + e.message; }
  route();
  search();
})();
