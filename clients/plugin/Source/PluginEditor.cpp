#include "PluginEditor.h"

MagnetEditor::MagnetEditor (MagnetProcessor& p) : AudioProcessorEditor (&p), proc (p)
{
    const char* names[] = { "Prompt", "Preset", "Seed (empty: random)", "Bars", "Daemon", "Slot", "Variations", "Inpaint from/to bar" };
    for (int i = 0; i < 8; ++i)
    {
        labels[i].setText (names[i], juce::dontSendNotification);
        addAndMakeVisible (labels[i]);
    }
    for (auto* e : { &prompt, &seed, &address, &inStart, &inEnd })
    {
        addAndMakeVisible (*e);
        e->onFocusLost = [this] { store(); };
        e->onReturnKey = [this] { store(); };
    }
    for (int b : { 1, 2, 4, 8, 16 })
        bars.addItem (juce::String (b), b);
    for (int k = 1; k <= kSlots; ++k)
        slot.addItem (juce::String (k) + " (note " + juce::MidiMessage::getMidiNoteName (kFirstNote + k - 1, true, true, 3) + ")", k);
    for (int v = 2; v <= 8; ++v)
        variations.addItem (juce::String (v), v);
    for (auto* c : { &preset, &bars, &slot, &variations })
    {
        addAndMakeVisible (*c);
        c->onChange = [this] { store(); };
    }
    addAndMakeVisible (loop);
    loop.onClick = [this] { store(); };
    auto act = [this] (juce::TextButton& b, DaemonWorker::Action a) {
        addAndMakeVisible (b);
        b.onClick = [this, a] { store(); proc.post (a); };
    };
    act (generate, DaemonWorker::Action::Generate);
    act (vary, DaemonWorker::Action::Variations);
    act (makeLoop, DaemonWorker::Action::Loop);
    act (inpaint, DaemonWorker::Action::Inpaint);
    act (cancel, DaemonWorker::Action::Cancel);
    addAndMakeVisible (play);
    play.onClick = [this] { proc.play (slot.getSelectedId() - 1); };
    addAndMakeVisible (stopButton);
    stopButton.onClick = [this] { proc.stop(); };
    addAndMakeVisible (light);
    addAndMakeVisible (progress);
    addAndMakeVisible (status);
    addAndMakeVisible (error);
    error.setColour (juce::Label::textColourId, juce::Colours::orange);
    addAndMakeVisible (drag);
    drag.setJustificationType (juce::Justification::centred);
    drag.setColour (juce::Label::outlineColourId, juce::Colours::grey);
    drag.path = [this] {
        std::lock_guard<std::mutex> g (proc.report.lock);
        return juce::String (proc.report.paths[(size_t) juce::jlimit (0, kSlots - 1, slot.getSelectedId() - 1)]);
    };
    load();
    setSize (620, 420);
    startTimerHz (15);
}

MagnetEditor::~MagnetEditor() { stopTimer(); }

void MagnetEditor::load()
{
    auto& s = proc.settings;
    std::lock_guard<std::mutex> g (s.lock);
    prompt.setText (s.prompt, false);
    seed.setText (s.seed >= 0 ? juce::String ((juce::int64) s.seed) : juce::String(), false);
    address.setText (s.address, false);
    inStart.setText (juce::String (s.inpaintStartBar), false);
    inEnd.setText (juce::String (s.inpaintEndBar), false);
    bars.setSelectedId (s.bars.load(), juce::dontSendNotification);
    slot.setSelectedId (s.selectedSlot + 1, juce::dontSendNotification);
    variations.setSelectedId (s.variations, juce::dontSendNotification);
    loop.setToggleState (s.loop.load(), juce::dontSendNotification);
    preset.clear (juce::dontSendNotification);
    preset.addItem (s.preset, 1);
    preset.setSelectedId (1, juce::dontSendNotification);
}

void MagnetEditor::store()
{
    auto& s = proc.settings;
    bool reconnect = false;
    {
        std::lock_guard<std::mutex> g (s.lock);
        s.prompt = prompt.getText();
        if (preset.getText().isNotEmpty())
            s.preset = preset.getText();
        s.seed = seed.getText().trim().isEmpty() ? -1 : juce::jmax ((juce::int64) 0, seed.getText().getLargeIntValue());
        s.inpaintStartBar = inStart.getText().getDoubleValue();
        s.inpaintEndBar = inEnd.getText().getDoubleValue();
        s.selectedSlot = juce::jlimit (0, kSlots - 1, slot.getSelectedId() - 1);
        s.variations = juce::jlimit (1, 8, variations.getSelectedId());
        reconnect = address.getText().trim() != s.address;
        s.address = address.getText().trim();
    }
    s.bars.store (juce::jmax (1, bars.getSelectedId()));
    s.loop.store (loop.getToggleState());
    if (reconnect)
        proc.post (DaemonWorker::Action::Reconnect);
}

void MagnetEditor::timerCallback()
{
    auto& r = proc.report;
    light.state = r.light.load();
    light.repaint();
    progressValue = r.busy.load() ? (double) r.progress.load() : (r.progress.load() >= 1.0f ? 1.0 : 0.0);
    juce::StringArray presets;
    {
        std::lock_guard<std::mutex> g (r.lock);
        status.setText (r.status, juce::dontSendNotification);
        error.setText (r.error, juce::dontSendNotification);
        presets = r.presets;
        const auto& path = r.paths[(size_t) juce::jlimit (0, kSlots - 1, slot.getSelectedId() - 1)];
        drag.setText (path.empty() ? "(no take in this slot)" : "Drag the take into your DAW: " + juce::File (path).getFileName(),
                      juce::dontSendNotification);
    }
    if (presets != shownPresets)
    {
        shownPresets = presets;
        const auto current = preset.getText();
        preset.clear (juce::dontSendNotification);
        preset.addItemList (presets, 1);
        preset.setText (current, juce::dontSendNotification);
    }
}

void MagnetEditor::paint (juce::Graphics& g)
{
    g.fillAll (getLookAndFeel().findColour (juce::ResizableWindow::backgroundColourId));
}

void MagnetEditor::resized()
{
    auto area = getLocalBounds().reduced (10);
    auto row = [&area] { auto r = area.removeFromTop (26); area.removeFromTop (4); return r; };
    auto labelled = [&] (int i, juce::Component& c) { auto r = row(); labels[i].setBounds (r.removeFromLeft (150)); c.setBounds (r); return r; };
    labelled (0, prompt);
    labelled (1, preset);
    labelled (2, seed);
    {
        auto r = row();
        labels[3].setBounds (r.removeFromLeft (150));
        bars.setBounds (r.removeFromLeft (80));
        loop.setBounds (r.removeFromLeft (140).withTrimmedLeft (10));
    }
    {
        auto r = row();
        labels[4].setBounds (r.removeFromLeft (150));
        light.setBounds (r.removeFromRight (26));
        address.setBounds (r);
    }
    {
        auto r = row();
        labels[5].setBounds (r.removeFromLeft (150));
        slot.setBounds (r.removeFromLeft (160));
        labels[6].setBounds (r.removeFromLeft (90).withTrimmedLeft (10));
        variations.setBounds (r.removeFromLeft (60));
    }
    {
        auto r = row();
        labels[7].setBounds (r.removeFromLeft (150));
        inStart.setBounds (r.removeFromLeft (60));
        inEnd.setBounds (r.removeFromLeft (60).withTrimmedLeft (6));
    }
    {
        auto r = row();
        const int w = r.getWidth() / 7;
        for (auto* b : { &generate, &vary, &makeLoop, &inpaint, &cancel, &play, &stopButton })
            b->setBounds (r.removeFromLeft (w).reduced (2, 0));
    }
    progress.setBounds (row());
    status.setBounds (row());
    error.setBounds (row());
    drag.setBounds (area.removeFromTop (40));
}
