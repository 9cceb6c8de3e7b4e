// img2mesh's page: uploads photos to /api/jobs, follows the selected job's events, shows its files as they appear.
"use strict";

const $ = (id) => document.getElementById(id);
const STAGES = {
  prepare_input: "cutting out",
  generate_views: "making the six views",
  pose_views: "posing the views",
  fit: "fitting the shape",
  write: "meshing, texturing and writing the files",
};
const DOWNLOADS = [
  ["mesh.glb", "Mesh (GLB)"],
  ["mesh.obj", "Mesh (OBJ)"],
  ["mesh.ply", "Mesh (PLY)"],
  ["views.png", "Views"],
  ["input.png", "Cut-out"],
  ["preview.png", "Preview"],
  ["transforms.json", "transforms.json"],
  ["folder.zip", "Everything (zip)"],
];

let selected = null;
let events = null;
let shown = {};

function fileUrl(job, name) {
  return `/api/jobs/${job.id}/files/${name}`;
}

async function detail(response) {
  try {
    return (await response.json()).detail;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function upload(files) {
  $("message").textContent = "";
  const options = {};
  for (const input of document.querySelectorAll(".options input")) {
    if (input.value !== "") options[input.name] = input.value;
  }
  let first = true;
  for (const file of files) {
    const form = new FormData();
    form.append("photo", file, file.name);
    for (const [key, value] of Object.entries(options)) form.append(key, value);
    const response = await fetch("/api/jobs", { method: "POST", body: form });
    if (!response.ok) {
      $("message").textContent = `${file.name}: ${await detail(response)}`;
      continue;
    }
    const job = await response.json();
    if (first) select(job);
    first = false;
  }
  refreshList();
}

function select(job) {
  selected = job.id;
  shown = {};
  if (events) events.close();
  $("current").hidden = false;
  $("cutout").hidden = $("views").hidden = $("viewer").hidden = true;
  $("viewer").removeAttribute("src");
  $("downloads").replaceChildren();
  document.body.dataset.viewerLoaded = "";
  render(job);
  events = new EventSource(`/api/jobs/${job.id}/events`);
  events.onmessage = (message) => {
    const current = JSON.parse(message.data);
    render(current);
    if (current.state === "done" || current.state === "failed") {
      events.close();
      refreshList();
    }
  };
  events.addEventListener("deleted", () => events.close());
  markSelected();
}

function render(job) {
  if (job.id !== selected) return;
  $("title").textContent = job.name;
  $("bar").value = job.progress;
  const seconds = Object.values(job.timings).reduce((a, b) => a + b, 0);
  $("stage").textContent =
    job.state === "running" ? STAGES[job.stage] || job.stage
    : job.state === "done" ? `done in ${seconds.toFixed(1)} s`
    : job.state;
  $("error").textContent = job.error || "";
  for (const [name, id] of [["input.png", "cutout"], ["views.png", "views"]]) {
    // The finished folder replaces the live file: load each once per place it comes from.
    const key = `${name}:${job.state === "done"}`;
    if (job.files.includes(name) && !shown[key]) {
      shown[key] = true;
      $(id).src = `${fileUrl(job, name)}?v=${Date.now()}`;
      $(id).hidden = false;
    }
  }
  if (job.state === "done" && job.files.includes("mesh.glb") && !shown.mesh) {
    shown.mesh = true;
    const viewer = $("viewer");
    viewer.hidden = false;
    viewer.addEventListener("load", () => (document.body.dataset.viewerLoaded = job.id), { once: true });
    viewer.src = fileUrl(job, "mesh.glb");
  }
  if (job.state === "done" && !shown.downloads) {
    shown.downloads = true;
    const stem = job.name.replace(/\.[^.]*$/, "");
    const links = DOWNLOADS.filter(([name]) => job.files.includes(name)).map(([name, label]) => {
      const link = document.createElement("a");
      link.href = fileUrl(job, name);
      link.download = name === "folder.zip" ? `${stem}.zip` : `${stem}-${name}`;
      link.textContent = label;
      link.id = `download-${name.replace(".", "-")}`;
      return link;
    });
    $("downloads").replaceChildren(...links);
  }
}

async function refreshList() {
  const response = await fetch("/api/jobs");
  if (!response.ok) return;
  const jobs = await response.json();
  const items = jobs.map((job) => {
    const item = document.createElement("li");
    item.dataset.id = job.id;
    const state = document.createElement("span");
    state.className = `state ${job.state}`;
    state.textContent = job.state === "running" ? `${Math.round(job.progress * 100)} %` : job.state;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = job.name;
    name.title = job.error || job.created;
    const remove = document.createElement("button");
    remove.className = "delete";
    remove.textContent = "✕";
    remove.title = "delete";
    remove.hidden = job.state === "running";
    remove.onclick = async (event) => {
      event.stopPropagation();
      const answer = await fetch(`/api/jobs/${job.id}`, { method: "DELETE" });
      if (!answer.ok) $("message").textContent = await detail(answer);
      if (selected === job.id) $("current").hidden = true;
      refreshList();
    };
    item.append(state, name, remove);
    item.onclick = () => select(job);
    return item;
  });
  $("jobs").replaceChildren(...items);
  markSelected();
}

function markSelected() {
  for (const item of $("jobs").children) item.classList.toggle("selected", item.dataset.id === selected);
}

async function health() {
  try {
    const response = await fetch("/api/health");
    const data = await response.json();
    const badge = $("health");
    badge.className = `badge ${data.status}`;
    badge.textContent =
      data.status === "ok" ? `ready · ${data.queued + data.running} in queue`
      : data.status === "loading" ? "loading the model…"
      : `error: ${data.error}`;
  } catch {
    $("health").textContent = "server unreachable";
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  upload([...event.dataTransfer.files]);
});
$("file").addEventListener("change", (event) => {
  upload([...event.target.files]);
  event.target.value = "";
});

refreshList();
health();
setInterval(health, 3000);
setInterval(refreshList, 5000);
