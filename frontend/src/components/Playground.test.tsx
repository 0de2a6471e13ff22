// @vitest-environment jsdom
import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { ApiError } from "../api/errors";
import type { Generation } from "../hooks/useGeneration";
import { RESPONSE, modelInfo } from "../test/fixtures";
import { Playground } from "./Playground";

const MODELS = [modelInfo("/ckpt/tiny-gpt2"), modelInfo("second", { model_id: "/ckpt/second-gpt2" }), modelInfo("cold", { ready: false })];

const IDLE: Generation = { phase: "idle", requestId: null, prompt: "", tokens: [], text: "", response: null, error: null, stopping: false, elapsedMs: null };

describe("Playground", () => {
  it("labels every control and shows the API's defaults", () => {
    render(<Playground generation={IDLE} onSubmit={() => {}} onStop={() => {}} />);
    expect(screen.getByLabelText("Prompt")).toBeInTheDocument();
    expect(screen.getByLabelText("Max tokens")).toHaveValue(64);
    expect(screen.getByLabelText("Temperature")).toHaveValue(0);
    expect(screen.getByLabelText("Top-p")).toHaveValue(1);
    expect(screen.getByLabelText("Top-k")).toHaveValue(0);
    expect(screen.getByLabelText("Seed")).toHaveValue(null);
    expect(screen.getByLabelText("Stop strings")).toHaveValue("");
    expect(screen.getByLabelText("Ignore end-of-text")).not.toBeChecked();
    expect(screen.getByLabelText("Result cache")).toBeChecked();
    expect(screen.getByRole("button", { name: "Stop" })).toBeDisabled();
  });

  it("sends the prompt and settings with Process Input, and with Ctrl+Enter", async () => {
    const user = userEvent.setup();
    const onSubmit = vi.fn();
    render(<Playground generation={IDLE} onSubmit={onSubmit} onStop={() => {}} />);
    const prompt = screen.getByLabelText("Prompt");
    await user.clear(prompt);
    await user.type(prompt, "Hello there");
    await user.clear(screen.getByLabelText("Max tokens"));
    await user.type(screen.getByLabelText("Max tokens"), "16");
    await user.click(screen.getByRole("button", { name: "Process Input" }));
    expect(onSubmit).toHaveBeenLastCalledWith({
      text: "Hello there",
      max_tokens: 16,
      temperature: 0,
      top_p: 1,
      top_k: 0,
      seed: null,
      stop: null,
      ignore_eos: false,
    });
    await user.click(prompt);
    await user.keyboard("{Control>}{Enter}{/Control}");
    expect(onSubmit).toHaveBeenCalledTimes(2);
  });

  it("offers Stop while streaming and shows the text so far", async () => {
    const user = userEvent.setup();
    const onStop = vi.fn();
    const running: Generation = { ...IDLE, phase: "running", requestId: "ui-1", prompt: "Hi", text: " there", tokens: [{ text: " there", atMs: 50 }] };
    render(<Playground generation={running} onSubmit={() => {}} onStop={onStop} />);
    expect(screen.getByRole("button", { name: "Process Input" })).toBeDisabled();
    expect(screen.getByTestId("generation-status")).toHaveTextContent("streaming · 1 tokens");
    expect(screen.getByTestId("generated-text")).toHaveTextContent("there");
    await user.click(screen.getByRole("button", { name: "Stop" }));
    expect(onStop).toHaveBeenCalledOnce();
  });

  it("says what went wrong in the page", () => {
    const failed: Generation = {
      ...IDLE,
      phase: "error",
      requestId: "ui-1",
      prompt: "Hi",
      error: new ApiError(503, "unavailable", "partition 1 has no usable replica", null, 1),
    };
    render(<Playground generation={failed} onSubmit={() => {}} onStop={() => {}} />);
    expect(screen.getByRole("alert")).toHaveTextContent("No healthy replica");
    expect(screen.getByRole("alert")).toHaveTextContent("partition 1 has no usable replica. Try again in 1 s.");
  });

  it("picks the model: the default first and marked, one not ready marked, `model` sent only when not the default", async () => {
    const user = userEvent.setup();
    const onSubmit = vi.fn();
    render(<Playground generation={IDLE} models={MODELS} onSubmit={onSubmit} onStop={() => {}} />);
    const picker = screen.getByLabelText("Model");
    expect(picker).toHaveValue("");
    const options = screen.getAllByRole("option").map((o) => [o.textContent, (o as HTMLOptionElement).value]);
    expect(options).toEqual([
      ["tiny-gpt2 (default)", ""],
      ["second", "second"],
      ["cold (not ready)", "cold"],
    ]);

    await user.click(screen.getByRole("button", { name: "Process Input" }));
    expect(onSubmit.mock.lastCall![0]).not.toHaveProperty("model"); // the default: the body `curl` would send

    await user.selectOptions(picker, "second");
    await user.click(screen.getByRole("button", { name: "Process Input" }));
    expect(onSubmit.mock.lastCall![0]).toMatchObject({ model: "second", text: "The meaning of life is" });

    await user.selectOptions(picker, "cold");
    expect(screen.getByText(/not ready/, { selector: ".hint" })).toBeInTheDocument();
    expect(picker).toHaveAccessibleDescription(/not ready/);

    await user.selectOptions(picker, "tiny-gpt2 (default)");
    await user.click(screen.getByRole("button", { name: "Process Input" }));
    expect(onSubmit.mock.lastCall![0]).not.toHaveProperty("model");
  });

  it("still offers the default before the models are known, and holds the choice while streaming", () => {
    const { rerender } = render(<Playground generation={IDLE} models={null} onSubmit={() => {}} onStop={() => {}} />);
    expect(screen.getAllByRole("option").map((o) => o.textContent)).toEqual(["the default model"]);
    rerender(<Playground generation={{ ...IDLE, phase: "running", requestId: "ui-1" }} models={MODELS} onSubmit={() => {}} onStop={() => {}} />);
    expect(screen.getByLabelText("Model")).toBeDisabled();
  });

  it("says which model answered", () => {
    const done: Generation = { ...IDLE, phase: "done", requestId: "ui-1", prompt: "Hi", text: " to be found", response: { ...RESPONSE, model: "second" } };
    render(<Playground generation={done} models={MODELS} onSubmit={() => {}} onStop={() => {}} />);
    expect(screen.getByTestId("output-model")).toHaveTextContent("second");
    expect(screen.getByTestId("generation-status")).toHaveTextContent("finished: length");
  });
});
