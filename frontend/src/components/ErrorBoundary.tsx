import { Component, type ReactNode } from "react";

/** A bug in the page shows as a sentence and a reload button, never a blank page. */
export class ErrorBoundary extends Component<{ children: ReactNode }, { error: Error | null }> {
  state = { error: null as Error | null };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  render() {
    if (!this.state.error) return this.props.children;
    return (
      <main className="layout">
        <div className="error-banner" role="alert">
          <div>
            <strong>The page hit a bug and stopped drawing</strong>
            <p>{this.state.error.message}</p>
            <button type="button" onClick={() => window.location.reload()}>
              Reload
            </button>
          </div>
        </div>
      </main>
    );
  }
}
