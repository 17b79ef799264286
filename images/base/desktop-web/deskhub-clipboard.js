/*
 * deskhub: the remote desktop's clipboard follows the browser's, both ways, wherever the
 * browser lets a page use navigator.clipboard (a secure context: https or localhost; for
 * reading, the clipboard-read permission, which Chromium asks the user for once).
 *
 * jupyter-remote-desktop-proxy's viewer keeps its "Remote Clipboard" panel, the fallback
 * where the API is missing or denied. This script only drives the panel's textarea:
 * - the viewer sends the textarea's text to the VNC server on its `change` event, so
 *   browser -> desktop sets the text and dispatches `change`;
 * - the viewer assigns textarea.value when the VNC server announces new clipboard text,
 *   so desktop -> browser hooks that assignment and calls navigator.clipboard.writeText.
 * Every failure is silent: the panel still shows and takes the text.
 *
 * window.deskhubClipboard holds counters and the last error, for tests and for support.
 */
(function () {
  "use strict";

  const panel = document.getElementById("clipboard-text");
  const native = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value");
  if (!panel || !native || !native.set) {
    return;
  }
  const api = window.isSecureContext && navigator.clipboard ? navigator.clipboard : null;
  const state = { known: null, pending: null, sent: 0, received: 0, reads: 0, writes: 0, error: "" };
  window.deskhubClipboard = state;

  function note(err) {
    state.error = String((err && err.message) || err);
  }

  // browser -> desktop -------------------------------------------------------------------
  function toDesktop(text) {
    if (typeof text !== "string" || text === "" || text === state.known) {
      return;
    }
    state.known = text;
    native.set.call(panel, text); // not through the hook below: this text is not new to us
    panel.dispatchEvent(new Event("change"));
    state.sent++;
  }

  // Reading without asking first only where the Permissions API knows clipboard-read
  // (Chromium): Firefox and Safari would pop up a "Paste" button on every focus instead.
  function mayRead() {
    if (!api || !api.readText || !navigator.permissions) {
      return Promise.resolve(false);
    }
    return navigator.permissions
      .query({ name: "clipboard-read" })
      .then((status) => status.state !== "denied")
      .catch(() => false);
  }

  let reading = null;
  function fromBrowser() {
    if (state.pending !== null) {
      toBrowser(); // the desktop's copy is newer than anything we could read
      return;
    }
    if (reading || !document.hasFocus()) {
      return;
    }
    reading = mayRead()
      .then((allowed) => (allowed ? api.readText() : null))
      .then((text) => {
        if (typeof text === "string") {
          state.reads++;
          toDesktop(text);
        }
      })
      .catch(note)
      .finally(() => {
        reading = null;
      });
  }

  // desktop -> browser -------------------------------------------------------------------
  function toBrowser() {
    const text = state.pending;
    if (text === null || !api || !api.writeText) {
      return;
    }
    api.writeText(text).then(
      () => {
        state.writes++;
        if (state.pending === text) {
          state.pending = null;
        }
      },
      note, // typically "document is not focused": kept pending, written on the next focus
    );
  }

  Object.defineProperty(panel, "value", {
    configurable: true,
    enumerable: true,
    get() {
      return native.get.call(this);
    },
    set(text) {
      native.set.call(this, text);
      state.received++;
      if (typeof text === "string" && text !== state.known) {
        state.known = text;
        state.pending = text;
        toBrowser();
      }
    },
  });

  // The user coming back to the desktop: the window or tab gains focus, or a click focuses
  // the viewer's canvas. Ctrl+V (Cmd+V) also checks, for the next paste at the latest.
  window.addEventListener("focus", fromBrowser);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      fromBrowser();
    }
  });
  document.addEventListener(
    "focusin",
    (event) => {
      if (event.target !== panel) {
        fromBrowser();
      }
    },
    true,
  );
  document.addEventListener(
    "keydown",
    (event) => {
      if ((event.ctrlKey || event.metaKey) && (event.key === "v" || event.key === "V")) {
        fromBrowser();
      }
    },
    true,
  );
  // A paste event carries the text itself, no permission needed (the viewer stops Ctrl+V
  // on its canvas, but a browser's Edit > Paste or a paste elsewhere on the page still
  // arrives here). Pastes into the panel are the panel's own business.
  document.addEventListener(
    "paste",
    (event) => {
      if (event.target !== panel && event.clipboardData) {
        toDesktop(event.clipboardData.getData("text/plain"));
      }
    },
    true,
  );
})();
