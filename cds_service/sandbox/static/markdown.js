// Card `detail` is GitHub-flavoured markdown written by a CDS service: whatever service the engineer
// points the page at. marked turns it into HTML; DOMPurify then removes scripts, event handlers and
// anything else active before it reaches the page.
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

// Links in a card leave the EHR: open them in a new tab, without giving that tab a handle on this one.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  // The page's CSP refuses inline styles; dropping them here keeps the console free of violations.
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
  FORBID_ATTR: ["style"],
};

/** Markdown -> a sanitised DocumentFragment, ready to append. */
export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ""), { async: false, gfm: true, breaks: false });
  return DOMPurify.sanitize(html, PURIFY);
}
