// Keyboard review on the feedback and candidates queues: j / k move between items, a digit
// toggles that category (feedback) or picks that answer (candidates), c writes a correction,
// s saves the review. Keys typed into a field are the field's, except Escape, which leaves it.
const items = Array.from(document.querySelectorAll("article.item"));
let current = Math.max(0, items.findIndex((el) => "#" + el.id === location.hash));

function focusItem(index) {
  if (!items.length) return;
  items.forEach((el) => el.classList.remove("focus"));
  current = Math.min(items.length - 1, Math.max(0, index));
  items[current].classList.add("focus");
  items[current].focus({ preventScroll: true });
  items[current].scrollIntoView({ block: "nearest" });
}

function digit(item, key) {
  const box = item.querySelector(`input[type=checkbox][data-key="${key}"]`);
  if (box) { box.checked = !box.checked; return; }
  const pick = item.querySelector(`button[data-key="${key}"]`);
  if (pick) pick.form.submit();
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);
  if (typing) { if (event.key === "Escape") event.target.blur(); return; }
  if (event.ctrlKey || event.metaKey || event.altKey || !items.length) return;
  const item = items[current];
  if (event.key === "j") focusItem(current + 1);
  else if (event.key === "k") focusItem(current - 1);
  else if (/^[1-9]$/.test(event.key)) digit(item, event.key);
  else if (event.key === "c") item.querySelector("textarea")?.focus();
  else if (event.key === "s") item.querySelector("form.review")?.requestSubmit();
  else return;
  event.preventDefault();
});

if (items.length) focusItem(current);
