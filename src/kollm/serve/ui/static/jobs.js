// A job's log, live: the server sends what the log holds, then each addition, as server-sent
// events until the job ends (an `end` event carrying its status).
const pre = document.getElementById("job-log");
const status = document.getElementById("job-status");
const source = new EventSource(pre.dataset.src);
source.onmessage = (event) => {
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent += JSON.parse(event.data);
  if (atEnd) pre.scrollTop = pre.scrollHeight;
};
source.addEventListener("end", (event) => {
  status.textContent = JSON.parse(event.data);
  document.querySelector(".live")?.remove();
  source.close();
});
